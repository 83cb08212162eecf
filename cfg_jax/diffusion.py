"""The diffusion math of the paper, as pure keyword-only functions.

Shapes: images `x`, `z`, `eps` are [B, ...]; log-SNRs `logsnr` are [B] (or scalars) and are
broadcast over the trailing image axes. In the notation of the paper, λ < λ' and the posterior
q(z_λ' | z_λ, x) moves toward data (larger λ' = less noise).

Numerics (float32 at λ = ±20): 1 − e^{λ−λ'} is computed as −expm1(λ − λ'), α and σ through
log_sigmoid, and the sampler variance in log space, so no step near λ_max divides 0 by 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cfg_jax import schedules


def broadcast_logsnr(logsnr: jax.Array, like: jax.Array) -> jax.Array:
  """Broadcasts a [B] (or scalar) log-SNR over the trailing axes of `like` ([B, ...])."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  if logsnr.ndim == 0:
    return logsnr
  if logsnr.shape != like.shape[:1]:
    raise ValueError(f"logsnr shape {logsnr.shape} does not match batch of shape {like.shape}.")
  return logsnr.reshape(logsnr.shape + (1,) * (like.ndim - 1))


def _check_same_shape(**arrays: jax.Array) -> None:
  shapes = {k: jnp.shape(v) for k, v in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"shape mismatch: {shapes}")


def diffuse(*, x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """Forward process z_λ = α_λ x + σ_λ ε."""
  _check_same_shape(x=x, eps=eps)
  alpha, sigma = schedules.alpha_sigma(broadcast_logsnr(logsnr, x))
  return alpha * x + sigma * eps


def x_from_eps(*, z: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """x̂ = (z − σ ε) / α."""
  _check_same_shape(z=z, eps=eps)
  alpha, sigma = schedules.alpha_sigma(broadcast_logsnr(logsnr, z))
  return (z - sigma * eps) / alpha


def eps_from_x(*, z: jax.Array, x: jax.Array, logsnr: jax.Array) -> jax.Array:
  """ε = (z − α x)/σ, the ε-prediction whose x̂ is x."""
  _check_same_shape(z=z, x=x)
  alpha, sigma = schedules.alpha_sigma(broadcast_logsnr(logsnr, z))
  return (z - alpha * x) / sigma


def one_minus_exp_diff(*, logsnr: jax.Array, logsnr_next: jax.Array) -> jax.Array:
  """1 − e^{λ−λ'}, as −expm1(λ − λ') (exact near λ ≈ λ')."""
  return -jnp.expm1(jnp.asarray(logsnr, jnp.float32) - jnp.asarray(logsnr_next, jnp.float32))


def posterior_mean_variance(
  *, z: jax.Array, x: jax.Array, logsnr: jax.Array, logsnr_next: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(z_λ' | z_λ, x) for λ < λ'.

  mean = e^{λ−λ'} (α_λ'/α_λ) z_λ + (1 − e^{λ−λ'}) α_λ' x,  variance σ̃² = (1 − e^{λ−λ'}) σ²_λ'.
  The variance has the shape of `logsnr` broadcast over the image axes.
  """
  _check_same_shape(z=z, x=x)
  l, ln = broadcast_logsnr(logsnr, z), broadcast_logsnr(logsnr_next, z)
  alpha_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(ln) - jax.nn.log_sigmoid(l)))
  alpha_next, _ = schedules.alpha_sigma(ln)
  r = jnp.exp(l - ln)
  one_minus_r = one_minus_exp_diff(logsnr=l, logsnr_next=ln)
  mean = r * alpha_ratio * z + one_minus_r * alpha_next * x
  var = one_minus_r * schedules.sigma_sq(ln)
  return mean, var


def sampler_log_variance(
  *, logsnr: jax.Array, logsnr_next: jax.Array, v: float | jax.Array
) -> jax.Array:
  """log of (σ̃²_{λ'|λ})^{1−v} (σ²_{λ|λ'})^{v}, the ancestral step's variance.

  v = 0 is the posterior (DDPM β̃) variance, v = 1 the forward-step (DDPM β) variance; the
  paper uses v = 0.3 at 64×64 and v = 0.2 at 128×128. Both factors share log(1 − e^{λ−λ'}).
  """
  log_one_minus_r = jnp.log(one_minus_exp_diff(logsnr=logsnr, logsnr_next=logsnr_next))
  log_post = log_one_minus_r + jax.nn.log_sigmoid(-jnp.asarray(logsnr_next, jnp.float32))
  log_fwd = log_one_minus_r + jax.nn.log_sigmoid(-jnp.asarray(logsnr, jnp.float32))
  return (1.0 - v) * log_post + v * log_fwd


def eps_loss(*, eps_pred: jax.Array, eps: jax.Array) -> jax.Array:
  """Per-example ‖ε_θ − ε‖², averaged over pixels (the mean, not the sum: a constant scale)."""
  _check_same_shape(eps_pred=eps_pred, eps=eps)
  return jnp.mean(jnp.square(eps_pred - eps), axis=tuple(range(1, eps.ndim)))
