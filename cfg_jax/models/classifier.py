"""The noise-conditional classifier p_φ(c | z_λ, λ) of classifier guidance (Dhariwal & Nichol 2021).

`NoisyClassifier` is the encoder half of the ADM U-Net (`unet.py`, whose blocks it uses): the same
λ embedding (no class embedding), input conv, down path and middle block, then ADM's
`EncoderUNetModel` head with pool='adaptive': GroupNorm → SiLU → global average pool →
zero-initialised Dense(num_classes), returning float32 logits [B, num_classes]. Its settings are
the config's `classifier` section (sized for the 8×8 digits); --mode=train_classifier trains it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cfg_jax.models import unet


class NoisyClassifier(unet.ADMBase):
  """ADM encoder classifier of noisy images: ``NoisyClassifier(...)(z, logsnr, train=...)`` →
  logits [B, num_classes]; the U-Net's hyperparameters and λ embedding (no label term).

  Args (call):
    z: [B, H, W, C] noisy images z_λ (NHWC).
    logsnr: [B] log-SNR λ of each z.
    train: enables dropout (then ``rngs={'dropout': key}`` is required when dropout > 0).
  """

  @nn.compact
  def __call__(self, z: jax.Array, logsnr: jax.Array, *, train: bool) -> jax.Array:
    assert z.ndim == 4, f"z must be [B, H, W, C], got shape {z.shape}"
    batch, height, width, _ = z.shape
    assert logsnr.shape == (batch,), f"logsnr must have shape {(batch,)}, got {logsnr.shape}"
    n_levels = len(self.ch_mult)
    unet.check_image_size(height, width, self.ch_mult)
    unet.check_attn_resolutions(height, tuple(self.attn_resolutions), n_levels)
    for m in self.ch_mult:
      self._heads(m * self.ch)
    common = dict(num_groups=self.num_groups, dtype=self.dtype)
    emb = self._logsnr_embedding(logsnr)

    def res_block(h, out_ch, name, down=False):
      block = unet.ResBlock(out_ch, dropout=self.dropout, down=down, name=name, **common)
      return block(h, emb, train)

    def attn_block(h, name):
      return unet.AttnBlock(num_heads=self._heads(h.shape[-1]), name=name, **common)(h)

    h = nn.Conv(
      self.ch_mult[0] * self.ch,
      (3, 3),
      padding=1,
      dtype=self.dtype,
      kernel_init=unet.torch_default_init,
      name="conv_in",
    )(z.astype(self.dtype))
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(h, mult * self.ch, f"down_{level}_res_{i}")
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(h, f"down_{level}_attn_{i}")
      if level != n_levels - 1:
        name = f"down_{level}_downsample"
        if self.resblock_updown:
          h = res_block(h, h.shape[-1], name, down=True)
        else:
          h = unet.Downsample(dtype=self.dtype, name=name)(h)
    h = res_block(h, h.shape[-1], "mid_res_0")
    h = attn_block(h, "mid_attn")
    h = res_block(h, h.shape[-1], "mid_res_1")

    # ADM's pool='adaptive' head, in float32: GN → SiLU → mean over H, W → zero-init linear.
    h = nn.silu(unet.group_norm(h.astype(jnp.float32), self.num_groups, "norm_out"))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(
      self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros_init(), name="logits"
    )(h)


def create_classifier(config: ml_collections.ConfigDict) -> NoisyClassifier:
  """The classifier of `config` (its classifier section, data.num_classes, the λ range)."""
  cc, m = config.classifier, config.model
  return NoisyClassifier(
    num_classes=config.data.num_classes,
    ch=cc.ch,
    ch_mult=tuple(cc.ch_mult),
    num_res_blocks=cc.num_res_blocks,
    attn_resolutions=tuple(cc.attn_resolutions),
    head_channels=cc.head_channels,
    num_groups=cc.num_groups,
    resblock_updown=m.resblock_updown,
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
  )
