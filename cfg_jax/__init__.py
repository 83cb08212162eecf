"""cfg_jax: classifier-free diffusion guidance (Ho & Salimans, 2022) in JAX/Flax.

Notation follows the paper: λ is the log-SNR log(α²/σ²), w the guidance strength
(w = 0 is the plain conditional model; codebases that write s = 1 + w call the same thing a
"guidance scale"), ∅ the null label, stored as the reserved class id ``num_classes``.
"""

import importlib.util

__version__ = "0.1.0"

# TensorFlow is not a hard requirement (a colab runtime has its own distribution of it; see
# pyproject.toml), but clu's summary writer and tf.data import it: say so before anything does.
if importlib.util.find_spec("tensorflow") is None:
  raise ImportError(
    "cfg_jax needs TensorFlow and none is installed: pip install 'cfg_jax[cpu]' (from a checkout:"
    " pip install -e '.[cpu]'), which adds the CPU wheels jax[cpu] and tensorflow-cpu; any"
    " distribution that provides `import tensorflow` (tensorflow, tensorflow-cpu) will do"
  )
