"""Test set-up: 8 fake CPU devices (tests that need 1 use a 1-device mesh), quiet TF, and no
Inception weights from the developer's default location (tests that want some pass a path)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# evaluation.inception_weights = "" looks here (cfg_jax.evaluation.inception); /dev/null is no file.
os.environ["CFG_JAX_INCEPTION_WEIGHTS"] = os.devnull
