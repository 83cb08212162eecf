"""ADM-style U-Net (Dhariwal & Nichol 2021) in Flax linen, conditioned on log-SNR and class.

The noise-prediction network eps_theta(z_lambda, c) of classifier-free guidance, mirroring
openai/guided-diffusion's ``UNetModel`` (``use_scale_shift_norm=True``) so that parameter counts
match it exactly, plus one class-embedding row for the NULL label ``num_classes``. The differences
from the PyTorch reference (NHWC, log-SNR conditioning, attention resolutions as feature-map sizes,
initialisation) are listed in docs/architecture.md. The module is over 450 lines because the
network, its blocks and the checks of its hyperparameters are read together against ADM's
`unet.py`, which has the same shape.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default (kaiming_uniform with a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_zeros = nn.initializers.zeros_init()

GN_EPSILON = 1e-5
# w is embedded as sinusoidal(W_EMBED_SCALE · w): w ∈ [0, 4] spans about the range 1000 u of λ.
W_EMBED_SCALE = 250.0


# ----------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------


def logsnr_to_unit_time(logsnr: jax.Array, logsnr_min: float, logsnr_max: float) -> jax.Array:
  """Map log-SNR lambda to u = arctan(exp(-lambda/2)) / (pi/2) in [0, 1].

  For the cosine schedule lambda(t) = -2 log tan(pi t / 2) this inverts to u = t,
  so u=0 is clean data (high SNR) and u=1 is pure noise.  lambda is clipped to
  [logsnr_min, logsnr_max] first.
  """
  logsnr = jnp.clip(logsnr.astype(jnp.float32), logsnr_min, logsnr_max)
  return jnp.arctan(jnp.exp(-0.5 * logsnr)) / (0.5 * jnp.pi)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Transformer-style embedding of a [B] float array into [B, dim] (sin half, cos half).

  Frequencies are exp(-log(max_period) * i / half) for i in [0, half); an odd `dim`
  gets a trailing zero column.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def avg_pool_2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 (NHWC)."""
  return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def nearest_upsample_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling (NHWC)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def num_groups_for(channels: int, num_groups: int) -> int:
  """Effective GroupNorm groups: gcd(num_groups, channels) (== 32 for ADM widths)."""
  return math.gcd(num_groups, channels)


def resolve_num_heads(
  channels: int, head_channels: int, num_heads: int, *, prefix: str = ""
) -> int:
  """Number of attention heads for a `channels`-wide feature map.

  Exactly one of `head_channels` / `num_heads` must be positive (ADM convention).
  """
  if (head_channels > 0) == (num_heads > 0):
    raise ValueError(
      f"Exactly one of {prefix}head_channels={head_channels} and {prefix}num_heads={num_heads} "
      f"must be positive: set {prefix}head_channels=-1 to use {prefix}num_heads, or "
      f"{prefix}num_heads=-1 to use {prefix}head_channels."
    )
  if head_channels > 0:
    if channels % head_channels:
      raise ValueError(
        f"{prefix}head_channels={head_channels} does not divide the {channels} channels of an "
        f"attention layer; choose {prefix}head_channels dividing every {prefix}ch * "
        f"{prefix}ch_mult[i]."
      )
    return channels // head_channels
  if channels % num_heads:
    raise ValueError(
      f"{prefix}num_heads={num_heads} does not divide the {channels} channels of an attention "
      f"layer; choose {prefix}num_heads dividing every {prefix}ch * {prefix}ch_mult[i]."
    )
  return num_heads


def check_hyperparameters(
  ch: int,
  ch_mult: tuple[int, ...],
  num_res_blocks: int,
  dropout: float,
  dtype: Any,
  *,
  prefix: str = "",
  min_res_blocks: int = 1,
) -> None:
  """Raise ValueError for widths below 1, fewer than `min_res_blocks` residual blocks per level
  (the U-Net needs 1, the classifier's encoder 0), dropout outside [0, 1) or a computation dtype
  other than float32, bfloat16 and float16."""
  if ch < 1 or not ch_mult or min(ch_mult) < 1 or num_res_blocks < min_res_blocks:
    raise ValueError(
      f"{prefix}ch={ch} and every entry of {prefix}ch_mult={tuple(ch_mult)} must be >= 1 "
      f"({prefix}ch_mult non-empty), and {prefix}num_res_blocks={num_res_blocks} >= "
      f"{min_res_blocks}."
    )
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"{prefix}dropout must be in [0, 1), got {dropout}.")
  if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"{prefix}dtype must be float32, bfloat16 or float16, got {jnp.dtype(dtype)}.")


def check_image_size(
  height: int, width: int, ch_mult: tuple[int, ...], *, prefix: str = ""
) -> None:
  """Raise ValueError unless H and W can be halved len(ch_mult) - 1 times."""
  n_down = len(ch_mult) - 1
  factor = 2**n_down
  for size in (height, width):
    if size % factor:
      raise ValueError(
        f"image size {size} cannot be halved {n_down} times for {prefix}ch_mult of length "
        f"{len(ch_mult)}; use an image size divisible by {factor} or a shorter {prefix}ch_mult."
      )


def check_attn_resolutions(
  height: int, attn_resolutions: tuple[int, ...], n_levels: int, *, prefix: str = ""
) -> None:
  """Raise ValueError if some attention resolution is not a feature-map size of the net."""
  sizes = [height // 2**i for i in range(n_levels)]
  missing = sorted(set(attn_resolutions) - set(sizes))
  if missing:
    raise ValueError(
      f"{prefix}attn_resolutions={tuple(attn_resolutions)} contains {missing}, which never "
      f"occurs: the feature maps of a {height}-pixel input have sizes {sizes}; pick "
      f"{prefix}attn_resolutions among those."
    )


def check_architecture(
  section: Any, image_shape: tuple[int, int, int], *, prefix: str, min_res_blocks: int = 1
) -> None:
  """Every check of an ADM network whose hyperparameters are the fields of a config section
  (`model` of the U-Net, `classifier` of the noisy classifier, whose encoder may have 0 residual
  blocks per level), naming them `<prefix><field>`."""
  ch_mult = tuple(section.ch_mult)
  dropout, dtype = section.get("dropout", 0.0), section.get("dtype", "float32")
  try:
    jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(
      f"{prefix}dtype={dtype!r}: {e}; use 'float32', 'bfloat16' or 'float16'."
    ) from None
  check_hyperparameters(
    section.ch,
    ch_mult,
    section.num_res_blocks,
    dropout,
    dtype,
    prefix=prefix,
    min_res_blocks=min_res_blocks,
  )
  height, width, _ = image_shape
  check_image_size(height, width, ch_mult, prefix=prefix)
  check_attn_resolutions(height, tuple(section.attn_resolutions), len(ch_mult), prefix=prefix)
  for m in ch_mult:
    resolve_num_heads(
      m * section.ch, section.head_channels, section.get("num_heads", -1), prefix=prefix
    )


def group_norm(x: jax.Array, num_groups: int, name: str) -> jax.Array:
  """GroupNorm (eps 1e-5) computed in float32 and cast back to x.dtype (as ADM's GroupNorm32).

  Must be called from inside a compact method: the module attaches to the caller.
  """
  groups = num_groups_for(x.shape[-1], num_groups)
  y = nn.GroupNorm(num_groups=groups, epsilon=GN_EPSILON, dtype=jnp.float32, name=name)(
    x.astype(jnp.float32)
  )
  return y.astype(x.dtype)


# ----------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------


class ResBlock(nn.Module):
  """ADM residual block with scale-shift (FiLM) conditioning and optional up/down.

  h = conv(updown(SiLU(GN(x))));  h = GN(h) * (1 + scale) + shift
  h = conv_zero(Dropout(SiLU(h)));  out = skip(updown(x)) + h
  """

  out_ch: int
  dropout: float = 0.0
  up: bool = False
  down: bool = False
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    assert not (self.up and self.down), "ResBlock cannot both upsample and downsample"
    conv = functools.partial(
      nn.Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype, kernel_init=torch_default_init
    )
    h = nn.silu(group_norm(x, self.num_groups, "norm_in"))
    if self.up:
      h, x = nearest_upsample_2x(h), nearest_upsample_2x(x)
    elif self.down:
      h, x = avg_pool_2x(h), avg_pool_2x(x)
    h = conv(self.out_ch, name="conv_in")(h)

    emb_out = nn.Dense(
      2 * self.out_ch, dtype=self.dtype, kernel_init=torch_default_init, name="emb_proj"
    )(nn.silu(emb))
    scale, shift = jnp.split(emb_out[:, None, None, :], 2, axis=-1)
    h = group_norm(h, self.num_groups, "norm_out") * (1 + scale) + shift
    h = nn.silu(h)
    h = nn.Dropout(rate=self.dropout, deterministic=not train)(h)
    h = conv(self.out_ch, kernel_init=_zeros, name="conv_out")(h)

    if x.shape[-1] != self.out_ch:
      x = nn.Conv(
        self.out_ch,
        kernel_size=(1, 1),
        dtype=self.dtype,
        kernel_init=torch_default_init,
        name="skip",
      )(x)
    return x + h


class AttnBlock(nn.Module):
  """Multi-head self-attention over the H*W positions (`jax.nn.dot_product_attention`), residual,
  zero-init output proj."""

  num_heads: int
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    head_dim = c // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=torch_default_init)

    h = group_norm(x, self.num_groups, "norm")
    qkv = dense(3 * c, name="qkv")(h).reshape(b, height * width, 3, self.num_heads, head_dim)
    # softmax(q k^T / sqrt(head_dim)) v, softmax in float32; XLA's implementation here, the
    # fused kernel where the backend has one (implementation=None).
    h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    h = h.reshape(b, height, width, c)
    h = dense(c, kernel_init=_zeros, name="proj_out")(h)
    return x + h


class Downsample(nn.Module):
  """Strided 3x3 conv (used when resblock_updown=False)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(
      x.shape[-1],
      (3, 3),
      strides=(2, 2),
      padding=1,
      dtype=self.dtype,
      kernel_init=torch_default_init,
      name="conv",
    )(x)


class Upsample(nn.Module):
  """Nearest 2x upsampling followed by a 3x3 conv (used when resblock_updown=False)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(
      x.shape[-1], (3, 3), padding=1, dtype=self.dtype, kernel_init=torch_default_init, name="conv"
    )(nearest_upsample_2x(x))


# ----------------------------------------------------------------------------------
# U-Net
# ----------------------------------------------------------------------------------


class ADMBase(nn.Module):
  """The ADM hyperparameters, λ embedding and attention heads that the U-Net and the noisy
  classifier of classifier guidance (its encoder half) share."""

  num_classes: int
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  head_channels: int = 64
  num_heads: int = -1
  dropout: float = 0.0
  resblock_updown: bool = True
  num_groups: int = 32
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  dtype: Any = jnp.float32

  def _logsnr_embedding(self, logsnr: jax.Array) -> jax.Array:
    """[B, 4ch]: MLP(sinusoidal(1000 u(lambda)))."""
    dense = functools.partial(
      nn.Dense, 4 * self.ch, dtype=self.dtype, kernel_init=torch_default_init
    )
    u = logsnr_to_unit_time(logsnr, self.logsnr_min, self.logsnr_max)
    emb = sinusoidal_embedding(1000.0 * u, self.ch).astype(self.dtype)
    emb = dense(name="logsnr_dense_0")(emb)
    return dense(name="logsnr_dense_1")(nn.silu(emb))

  def _heads(self, channels: int) -> int:
    return resolve_num_heads(channels, self.head_channels, self.num_heads)


class UNet(ADMBase):
  """Class- and log-SNR-conditional ADM U-Net: ``UNet(...)(z, logsnr, labels, train=...)``.

  Args (call):
    z: [B, H, W, C] noisy images (NHWC).
    logsnr: [B] log-SNR lambda of each z.
    labels: [B] int class ids in [0, num_classes]; ``num_classes`` is the NULL label.
    train: enables dropout (then ``rngs={'dropout': key}`` is required when dropout > 0).

  Returns:
    eps prediction with the shape of z (``out_channels`` channels if set).
  """

  out_channels: int | None = None
  remat: bool = False
  # A guided-distilled student (cfg_jax/distillation.py): the call takes w, embedded and added to the
  # λ embedding by an MLP whose last layer starts at zero (at init: the model without it).
  w_embedding: bool = False

  def _w_embedding(self, w: jax.Array) -> jax.Array:
    """[B, 4ch]: MLP(sinusoidal(W_EMBED_SCALE w)), zero at initialisation."""
    emb = sinusoidal_embedding(W_EMBED_SCALE * w, self.ch).astype(self.dtype)
    emb = nn.Dense(4 * self.ch, dtype=self.dtype, kernel_init=torch_default_init, name="w_dense_0")(
      emb
    )
    return nn.Dense(
      4 * self.ch, dtype=self.dtype, kernel_init=_zeros, bias_init=_zeros, name="w_dense_1"
    )(nn.silu(emb))

  def _embed(self, logsnr: jax.Array, labels: jax.Array, w: jax.Array | None) -> jax.Array:
    """Conditioning vector [B, 4ch]: MLP(sinusoidal(1000 u(lambda))) + Embed(label)
    (+ the w embedding of a distilled student)."""
    label_emb = nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name="label_emb")
    emb = self._logsnr_embedding(logsnr) + label_emb(labels)
    return emb + self._w_embedding(w) if self.w_embedding else emb

  @nn.compact
  def __call__(
    self,
    z: jax.Array,
    logsnr: jax.Array,
    labels: jax.Array,
    w: jax.Array | None = None,
    *,
    train: bool,
  ) -> jax.Array:
    assert z.ndim == 4, f"z must be [B, H, W, C], got shape {z.shape}"
    batch, height, width, in_ch = z.shape
    assert logsnr.shape == (batch,), f"logsnr must have shape {(batch,)}, got {logsnr.shape}"
    assert labels.shape == (batch,), f"labels must have shape {(batch,)}, got {labels.shape}"
    assert jnp.issubdtype(labels.dtype, jnp.integer), f"labels must be ints, got {labels.dtype}"
    if self.w_embedding != (w is not None):
      raise ValueError(
        f"w_embedding={self.w_embedding} but w {'was' if w is not None else 'was not'} given: "
        "a distilled student (w_embedding=True) takes w [B], any other U-Net does not."
      )
    assert w is None or w.shape == (batch,), f"w must have shape {(batch,)}, got {w.shape}"
    n_levels = len(self.ch_mult)
    check_hyperparameters(self.ch, self.ch_mult, self.num_res_blocks, self.dropout, self.dtype)
    check_image_size(height, width, self.ch_mult)
    check_attn_resolutions(height, tuple(self.attn_resolutions), n_levels)
    for m in self.ch_mult:  # validate the head configuration up front
      self._heads(m * self.ch)
    out_channels = self.out_channels or in_ch

    # remat: every res-block and attention block recomputes its activations in the backward
    # pass instead of storing them (the 32x32 attention maps are the largest of them).
    res_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
    attn_cls = nn.remat(AttnBlock) if self.remat else AttnBlock
    common = dict(num_groups=self.num_groups, dtype=self.dtype)

    def res_block(h, out_ch, name, up=False, down=False):
      block = res_cls(out_ch, dropout=self.dropout, up=up, down=down, name=name, **common)
      return block(h, emb, train)

    def attn_block(h, name):
      return attn_cls(num_heads=self._heads(h.shape[-1]), name=name, **common)(h)

    def maybe_attn(h, name):
      return attn_block(h, name) if h.shape[1] in self.attn_resolutions else h

    emb = self._embed(logsnr, labels, w)

    # Down path: keep every intermediate activation as a skip connection.
    h = nn.Conv(
      self.ch_mult[0] * self.ch,
      (3, 3),
      padding=1,
      dtype=self.dtype,
      kernel_init=torch_default_init,
      name="conv_in",
    )(z.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(h, mult * self.ch, f"down_{level}_res_{i}")
        h = maybe_attn(h, f"down_{level}_attn_{i}")
        skips.append(h)
      if level != n_levels - 1:
        name = f"down_{level}_downsample"
        if self.resblock_updown:
          h = res_block(h, h.shape[-1], name, down=True)
        else:
          h = Downsample(dtype=self.dtype, name=name)(h)
        skips.append(h)

    # Middle.
    h = res_block(h, h.shape[-1], "mid_res_0")
    h = attn_block(h, "mid_attn")
    h = res_block(h, h.shape[-1], "mid_res_1")

    # Up path: num_res_blocks + 1 blocks per level, each eating one skip.
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(h, mult * self.ch, f"up_{level}_res_{i}")
        h = maybe_attn(h, f"up_{level}_attn_{i}")
      if level != 0:
        name = f"up_{level}_upsample"
        if self.resblock_updown:
          h = res_block(h, h.shape[-1], name, up=True)
        else:
          h = Upsample(dtype=self.dtype, name=name)(h)
    assert not skips, "internal error: unused skip connections"

    # Output head in float32.
    h = nn.silu(group_norm(h.astype(jnp.float32), self.num_groups, "norm_out"))
    out = nn.Conv(
      out_channels,
      (3, 3),
      padding=1,
      dtype=jnp.float32,
      kernel_init=_zeros,
      bias_init=_zeros,
      name="conv_out",
    )(h)
    return out.astype(z.dtype)


def count_params(model: UNet, image_shape: tuple[int, int, int]) -> int:
  """Number of parameters of `model` for [H, W, C] inputs, via jax.eval_shape (no allocation)."""
  height, width, channels = image_shape
  z = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  w = (logsnr,) if model.w_embedding else ()
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), z, logsnr, labels, *w)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
