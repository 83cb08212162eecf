"""Guidance variants beyond the paper, for every method: a guidance interval in λ (Kynkäänniemi et
al. 2024) whose outside steps run the unguided prediction only, CFG rescale (Lin et al. 2023) of the
x̂ prediction, and static / dynamic (Imagen) thresholding of x̃; `sampling.denoise` applies them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

THRESHOLDING_MODES = ("none", "static", "dynamic")


def in_interval(logsnr: jax.Array, *, interval: tuple[float, float] | None) -> jax.Array:
  """λ_lo <= λ <= λ_hi (elementwise, in float32); always True when interval is None."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  if interval is None:
    return jnp.ones(logsnr.shape, bool)
  lo, hi = (jnp.float32(v) for v in interval)
  return (lo <= logsnr) & (logsnr <= hi)


def interval_from_sigmas(*, sigma_lo: float, sigma_hi: float) -> tuple[float, float]:
  """A guidance interval given as EDM noise levels σ_lo < σ_hi → (λ_lo, λ_hi) in log-SNR.

  Kynkäänniemi et al. (2024) state their interval in EDM's σ_EDM = σ/α = e^{−λ/2}, so
  λ = −2 log σ_EDM (a larger σ is a smaller λ: the ends swap). EDM2's (0.28, 5.42] is about
  λ ∈ [−3.38, 2.55].
  """
  if not 0.0 <= sigma_lo <= sigma_hi:
    raise ValueError(f"need 0 <= sigma_lo <= sigma_hi, got {sigma_lo}, {sigma_hi}.")
  lam_lo = -2.0 * math.log(sigma_hi) if sigma_hi > 0 else math.inf
  lam_hi = -2.0 * math.log(sigma_lo) if sigma_lo > 0 else math.inf
  return lam_lo, lam_hi


def per_sample_std(x: jax.Array) -> jax.Array:
  """Standard deviation of each sample over all its non-batch axes, shape [B, 1, ...]."""
  return jnp.std(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def rescale_guided(*, x_guided: jax.Array, x_cond: jax.Array, phi: float | jax.Array) -> jax.Array:
  """CFG rescale (Lin et al. 2023, Sec. 3.4), per sample.

  x_rescaled = x_guided · std(x_cond) / std(x_guided); returns φ x_rescaled + (1 − φ) x_guided.
  φ = 0 returns x_guided; φ = 1 matches the conditional prediction's per-sample std. The sampler
  applies it to the x̂ predictions (as the paper does), not to ε.
  """
  std_g, std_c = per_sample_std(x_guided), per_sample_std(x_cond)
  ratio = jnp.where(std_g > 0, std_c / jnp.where(std_g > 0, std_g, 1.0), 1.0)
  return x_guided * (phi * ratio + (1.0 - phi))


def static_threshold(x: jax.Array) -> jax.Array:
  """Static thresholding: clip x̃ to [−1, 1]."""
  return jnp.clip(x, -1.0, 1.0)


def dynamic_threshold(x: jax.Array, *, p: float) -> jax.Array:
  """Imagen's dynamic thresholding, per sample.

  s = max(1, quantile_p(|x̃|)) over the sample's pixels, x̃ ← clip(x̃, −s, s) / s. Keeps
  |x̃| <= 1, and is the identity when all |x̃| <= 1 (then s = 1), where it equals static.
  """
  b = x.shape[0]
  s = jnp.quantile(jnp.abs(x).reshape(b, -1), p, axis=1)
  s = jnp.maximum(s, 1.0).reshape((b,) + (1,) * (x.ndim - 1))
  return jnp.clip(x, -s, s) / s


def threshold(x: jax.Array, *, mode: str, p: float = 0.995) -> jax.Array:
  """Thresholding of x̃ by mode: 'none', 'static' ([−1, 1]) or 'dynamic' (percentile p)."""
  if mode == "none":
    return x
  if mode == "static":
    return static_threshold(x)
  if mode == "dynamic":
    return dynamic_threshold(x, p=p)
  raise ValueError(f"sampling.thresholding must be one of {THRESHOLDING_MODES}, got {mode!r}.")
