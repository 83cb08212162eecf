"""DiT (Peebles & Xie 2023) with adaLN-Zero in Flax linen: the transformer eps_theta(z_lambda, c).

It mirrors facebookresearch/DiT's ``models.py`` (patch embedding, fixed 2-D sin-cos position
embedding, adaLN-Zero blocks, zero-initialised final layer, its ``initialize_weights``) so that
the trainable parameter counts equal the reference's exactly, and ``params_from_reference`` maps
its state dict onto these parameters. The differences: images are NHWC (and need not be square);
the timestep is t = 1000 u(lambda), the U-Net's log-SNR-to-unit-time map, instead of DDPM's
integer step; the label table always has the null row ``num_classes`` (the reference's
``class_dropout_prob > 0``; label dropout happens in training, outside the model); the output is
eps alone (the reference's ``learn_sigma=False``); and a distilled student may add a w embedding.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax.models.unet import W_EMBED_SCALE, logsnr_to_unit_time

FREQUENCY_EMBEDDING_SIZE = 256  # width of the sinusoidal timestep (and w) embedding
LN_EPSILON = 1e-6

# The DiT paper's models: (depth, hidden_size, num_heads); a preset name adds the patch size.
MODEL_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PRESETS = {
  f"{model}/{patch}": dict(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads)
  for model, (depth, hidden, heads) in MODEL_SIZES.items()
  for patch in (2, 4, 8)
}

# The reference's initialize_weights: xavier-uniform Linear kernels (the patch embedding's on its
# flattened [p*p*C, hidden] kernel), zero biases, N(0, 0.02) label table and timestep MLP.
xavier = nn.initializers.xavier_uniform()
patch_xavier = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)
normal_002 = nn.initializers.normal(0.02)
_zeros = nn.initializers.zeros_init()


# ----------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------


def preset_sizes(name: str) -> dict[str, int]:
  """{patch_size, hidden_size, depth, num_heads} of a DiT paper preset such as "XL/2"."""
  if name not in PRESETS:
    raise ValueError(f"unknown DiT preset model.dit_preset={name!r}; valid ones: {list(PRESETS)}.")
  return dict(PRESETS[name])


def check_sizes(
  height: int,
  width: int,
  *,
  patch_size: int,
  hidden_size: int,
  depth: int,
  num_heads: int,
  mlp_ratio: float,
  dtype: Any,
) -> None:
  """Raise ValueError, naming the config field, for sizes the DiT cannot be built with."""
  if min(patch_size, hidden_size, depth, num_heads) < 1 or int(hidden_size * mlp_ratio) < 1:
    raise ValueError(
      f"patch_size={patch_size}, hidden_size={hidden_size}, depth={depth}, num_heads={num_heads} "
      f"and int(hidden_size * mlp_ratio={mlp_ratio}) must all be >= 1 (model.dit_patch_size, "
      "model.dit_hidden_size, model.dit_depth, model.dit_num_heads, model.dit_mlp_ratio)."
    )
  if height % patch_size or width % patch_size:
    raise ValueError(
      f"image size {height}x{width} is not divisible by patch_size={patch_size} "
      "(model.dit_patch_size or the /p of model.dit_preset); use a patch size dividing both."
    )
  if hidden_size % num_heads:
    raise ValueError(
      f"hidden_size={hidden_size} (model.dit_hidden_size) is not divisible by "
      f"num_heads={num_heads} (model.dit_num_heads)."
    )
  if hidden_size % 4:
    raise ValueError(
      f"hidden_size={hidden_size} (model.dit_hidden_size) must be a multiple of 4: the 2-D "
      "sin-cos position embedding gives a quarter of it to each of sin/cos of rows/columns."
    )
  if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(
      f"dtype must be float32, bfloat16 or float16 (model.dtype), got {jnp.dtype(dtype)}."
    )


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """DiT's (GLIDE's) embedding of a [B] float array into [B, dim]: cos half, then sin half."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[M, dim] float64: sin(pos * omega), then cos, with omega_i = 10000^(-2i / dim)."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """[grid_h * grid_w, dim] float32 fixed position embedding of the row-major patch tokens.

  As the reference's ``get_2d_sincos_pos_embed``: the first half of the channels encodes the
  column index, the second half the row index.
  """
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C] tokens, row-major, each (row, col, channel)."""
  b, height, width, c = x.shape
  x = x.reshape(b, height // p, p, width // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (height // p) * (width // p), p * p * c)


def unpatchify(x: jax.Array, p: int, grid_h: int, grid_w: int) -> jax.Array:
  """Inverse of `patchify`: [B, grid_h * grid_w, p*p*C] -> [B, grid_h p, grid_w p, C]."""
  b, _, d = x.shape
  c = d // (p * p)
  x = x.reshape(b, grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid_h * p, grid_w * p, c)


def layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm without scale and bias (eps 1e-6) over the last axis, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + LN_EPSILON)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN: x [B, T, D] * (1 + scale [B, D]) + shift [B, D]."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


# ----------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
  """sinusoidal(t) (256 wide) -> Dense -> SiLU -> Dense; `zero_out` zeroes the last layer
  (the w embedding of a distilled student: the model without it at initialisation)."""

  hidden_size: int
  zero_out: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, self.hidden_size, dtype=self.dtype, bias_init=_zeros)
    emb = timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE).astype(self.dtype)
    emb = nn.silu(dense(kernel_init=normal_002, name="mlp_0")(emb))
    return dense(kernel_init=_zeros if self.zero_out else normal_002, name="mlp_2")(emb)


class Attention(nn.Module):
  """timm's Attention (qkv with bias, no q/k norm): multi-head softmax self-attention through
  `jax.nn.dot_product_attention` (its XLA implementation by default; the same call takes
  implementation='cudnn' for cuDNN's fused flash attention on GPU)."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=xavier, bias_init=_zeros)
    qkv = dense(3 * d, name="qkv")(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
    h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return dense(d, name="proj")(h.reshape(b, t, d))


class Mlp(nn.Module):
  """timm's Mlp: Dense(hidden_features) -> GELU (tanh approximation) -> Dense(D)."""

  hidden_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=xavier, bias_init=_zeros)
    h = nn.gelu(dense(self.hidden_features, name="fc1")(x), approximate=True)
    return dense(x.shape[-1], name="fc2")(h)


class DiTBlock(nn.Module):
  """adaLN-Zero block: SiLU(c) -> zero-initialised Dense(6D) gives shift/scale/gate for
  x += gate * Attn(modulate(LN(x))) and x += gate * MLP(modulate(LN(x)))."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    d = x.shape[-1]
    mod = nn.Dense(
      6 * d, dtype=self.dtype, kernel_init=_zeros, bias_init=_zeros, name="adaLN_modulation"
    )(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = Attention(self.num_heads, dtype=self.dtype, name="attn")(
      modulate(layer_norm(x), shift_msa, scale_msa)
    )
    x = x + gate_msa[:, None, :] * h
    h = Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(
      modulate(layer_norm(x), shift_mlp, scale_mlp)
    )
    return x + gate_mlp[:, None, :] * h


class FinalLayer(nn.Module):
  """modulate(LN(x)) by a zero-initialised SiLU -> Dense(2D), then a zero-initialised Dense to
  the p*p*C_out values of each patch, in float32 (so the output is exactly 0 at init)."""

  patch_size: int
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    mod = nn.Dense(
      2 * x.shape[-1],
      dtype=self.dtype,
      kernel_init=_zeros,
      bias_init=_zeros,
      name="adaLN_modulation",
    )(nn.silu(c))
    shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
    x = modulate(layer_norm(x.astype(jnp.float32)), shift, scale)
    return nn.Dense(
      self.patch_size**2 * self.out_channels,
      dtype=jnp.float32,
      kernel_init=_zeros,
      bias_init=_zeros,
      name="linear",
    )(x)


# ----------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------


class DiT(nn.Module):
  """Class- and log-SNR-conditional DiT: ``DiT(...)(z, logsnr, labels, w=None, train=...)``.

  The defaults are DiT-S/2; `PRESETS` / `preset_sizes` hold the paper's S, B, L and XL sizes.

  Args (call):
    z: [B, H, W, C] noisy images or latents (NHWC), H and W divisible by patch_size.
    logsnr: [B] log-SNR lambda of each z.
    labels: [B] int class ids in [0, num_classes]; ``num_classes`` is the null label.
    w: [B] guidance strengths, exactly when ``w_embedding`` (a guided-distilled student).
    train: accepted for the U-Net's signature; DiT has no dropout.

  Returns:
    eps prediction with the shape of z (``out_channels`` channels if set), in z's dtype.
  """

  num_classes: int
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  out_channels: int | None = None
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  dtype: Any = jnp.float32
  remat: bool = False  # every block recomputes its activations in the backward pass
  w_embedding: bool = False  # a guided-distilled student: + MLP(sinusoidal(W_EMBED_SCALE w))

  def _condition(self, logsnr: jax.Array, labels: jax.Array, w: jax.Array | None) -> jax.Array:
    """c [B, D] = t_embedder(1000 u(lambda)) + y_embedder(label) (+ the student's w embedding)."""
    t = 1000.0 * logsnr_to_unit_time(logsnr, self.logsnr_min, self.logsnr_max)
    embedder = functools.partial(TimestepEmbedder, self.hidden_size, dtype=self.dtype)
    table = nn.Embed(
      self.num_classes + 1,
      self.hidden_size,
      dtype=self.dtype,
      embedding_init=normal_002,
      name="y_embedder",
    )
    c = embedder(name="t_embedder")(t) + table(labels)
    if self.w_embedding:
      c = c + embedder(zero_out=True, name="w_embedder")(W_EMBED_SCALE * w)
    return c

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
    del train  # no dropout in DiT
    assert z.ndim == 4, f"z must be [B, H, W, C], got shape {z.shape}"
    batch, height, width, in_ch = z.shape
    assert logsnr.shape == (batch,), f"logsnr must have shape {(batch,)}, got {logsnr.shape}"
    assert labels.shape == (batch,), f"labels must have shape {(batch,)}, got {labels.shape}"
    assert jnp.issubdtype(labels.dtype, jnp.integer), f"labels must be ints, got {labels.dtype}"
    if self.w_embedding != (w is not None):
      raise ValueError(
        f"w_embedding={self.w_embedding} but w {'was' if w is not None else 'was not'} given: "
        "a distilled student (w_embedding=True) takes w [B], any other DiT does not."
      )
    assert w is None or w.shape == (batch,), f"w must have shape {(batch,)}, got {w.shape}"
    p = self.patch_size
    check_sizes(
      height,
      width,
      patch_size=p,
      hidden_size=self.hidden_size,
      depth=self.depth,
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      dtype=self.dtype,
    )
    grid_h, grid_w = height // p, width // p

    x = nn.Conv(
      self.hidden_size,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      kernel_init=patch_xavier,
      bias_init=_zeros,
      name="x_embedder",
    )(z.astype(self.dtype))
    x = x.reshape(batch, grid_h * grid_w, self.hidden_size)
    x = x + jnp.asarray(pos_embed_2d(self.hidden_size, grid_h, grid_w), self.dtype)
    c = self._condition(logsnr, labels, w)

    block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"blocks_{i}")(x, c)
    out_channels = self.out_channels or in_ch
    x = FinalLayer(p, out_channels, dtype=self.dtype, name="final_layer")(x, c)
    return unpatchify(x, p, grid_h, grid_w).astype(z.dtype)


# ----------------------------------------------------------------------------------
# The reference's weights
# ----------------------------------------------------------------------------------


def reference_param_path(name: str) -> tuple[str, ...] | None:
  """The DiT params path of facebookresearch/DiT's parameter `name` (None for the fixed
  ``pos_embed``, which is no parameter here), e.g. blocks.3.attn.qkv.weight ->
  (blocks_3, attn, qkv, kernel)."""
  if name == "pos_embed":
    return None
  for pattern, repl in _REFERENCE_RENAMES:
    name = re.sub(pattern, repl, name)
  return tuple(name.split("."))


_REFERENCE_RENAMES = (
  (r"^blocks\.(\d+)\.", r"blocks_\1."),
  (r"\.mlp\.(\d)\.", r".mlp_\1."),  # the timestep MLP's Sequential indices
  (r"adaLN_modulation\.1\.", "adaLN_modulation."),
  (r"^x_embedder\.proj\.", "x_embedder."),
  (r"embedding_table\.weight$", "embedding"),
  (r"\.weight$", ".kernel"),
)


def params_from_reference(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """The DiT params equal to facebookresearch/DiT's `state_dict` (numpy arrays by torch name).

  Linear weights [out, in] become Dense kernels [in, out] and the patch embedding's Conv2d
  weight [D, C, p, p] becomes [p, p, C, D].
  """
  params: dict[str, Any] = {}
  for name, value in state_dict.items():
    path = reference_param_path(name)
    if path is None:
      continue
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return params
