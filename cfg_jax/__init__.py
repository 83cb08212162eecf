"""cfg_jax: classifier-free diffusion guidance (Ho & Salimans, 2022) in JAX/Flax.

Notation follows the paper: λ is the log-SNR log(α²/σ²), w the guidance strength
(w = 0 is the plain conditional model; codebases that write s = 1 + w call the same thing a
"guidance scale"), ∅ the null label, stored as the reserved class id ``num_classes``.

Three layers, each importing only the ones below it: the math and the networks (schedules,
diffusion, guidance, sampling, likelihood, toy2d, models: jax, flax and numpy alone), the runtime
that places them on devices and disks, and the jobs of the command line (`cfg_jax.jobs`);
docs/architecture.md has the map.
"""

__version__ = "0.1.0"
