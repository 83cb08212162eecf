"""The networks of cfg_jax and the ones a config describes: the ADM U-Net ε_θ(z_λ, c) (`unet`)
and the noise-conditional classifier of classifier guidance (`classifier`)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from cfg_jax.data.specs import image_shape
from cfg_jax.models.classifier import NoisyClassifier, create_classifier
from cfg_jax.models.unet import UNet, count_params

__all__ = [
  "NoisyClassifier",
  "UNet",
  "count_params",
  "create_classifier",
  "create_model",
  "image_shape",
]


def create_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of `config` (its model section, data.num_classes, the diffusion λ range); with
  distill.student set, the w-conditioned U-Net of a distilled student."""
  m = config.model
  return UNet(
    num_classes=config.data.num_classes,
    ch=m.ch,
    ch_mult=tuple(m.ch_mult),
    num_res_blocks=m.num_res_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    head_channels=m.head_channels,
    num_heads=m.num_heads,
    dropout=m.dropout,
    resblock_updown=m.resblock_updown,
    num_groups=m.num_groups,
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
    dtype=jnp.dtype(m.dtype),
    remat=m.remat,
    w_embedding=bool(config.distill.student),
  )
