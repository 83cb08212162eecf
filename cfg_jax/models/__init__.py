"""Neural network architectures for cfg_jax."""

from cfg_jax.models.unet import UNet, count_params

__all__ = ["UNet", "count_params"]
