"""The networks of cfg_jax and the one a config describes: the ADM U-Net ε_θ(z_λ, c) (`unet`) or
the DiT (`dit`) by `model.name`, and the noise-conditional classifier of classifier guidance
(`classifier`)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from cfg_jax.data.specs import image_shape
from cfg_jax.models.classifier import NoisyClassifier, create_classifier
from cfg_jax.models.dit import DiT, preset_sizes
from cfg_jax.models.unet import UNet, count_params

__all__ = [
  "DiT",
  "MODEL_NAMES",
  "NoisyClassifier",
  "UNet",
  "count_params",
  "create_classifier",
  "create_model",
  "image_shape",
]

MODEL_NAMES = ("unet", "dit")  # the values of config.model.name


def create_model(config: ml_collections.ConfigDict) -> UNet | DiT:
  """The U-Net or DiT of `config` by model.name (its model section, data.num_classes, the
  diffusion λ range); with distill.student set, the w-conditioned network of a distilled student."""
  m = config.model
  if m.name not in MODEL_NAMES:
    raise ValueError(f"model.name={m.name!r} is not one of {MODEL_NAMES}.")
  if m.name == "dit":
    return create_dit(config)
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


def create_dit(config: ml_collections.ConfigDict) -> DiT:
  """The DiT of `config`: model.dit_preset's sizes, or else the model.dit_* fields'."""
  m = config.model
  if m.dit_preset:
    sizes = preset_sizes(m.dit_preset)
  else:
    sizes = dict(
      patch_size=m.dit_patch_size,
      hidden_size=m.dit_hidden_size,
      depth=m.dit_depth,
      num_heads=m.dit_num_heads,
    )
  return DiT(
    num_classes=config.data.num_classes,
    **sizes,
    mlp_ratio=m.dit_mlp_ratio,
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
    dtype=jnp.dtype(m.dtype),
    remat=m.remat,
    w_embedding=bool(config.distill.student),
  )
