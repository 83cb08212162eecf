"""cfg_jax: classifier-free diffusion guidance (Ho & Salimans, 2022) in JAX/Flax.

Notation follows the paper: λ is the log-SNR log(α²/σ²), w the guidance strength
(w = 0 is the plain conditional model; codebases that write s = 1 + w call the same thing a
"guidance scale"), ∅ the null label, stored as the reserved class id ``num_classes``.
"""

__version__ = "0.1.0"
