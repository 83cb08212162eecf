"""The paper's cosine log-SNR schedule and the α, σ it implies.

λ(u) = −2 log tan(a u + b) maps u ∈ [0, 1] onto [λ_min, λ_max] with u = 0 → λ_max (clean)
and u = 1 → λ_min (pure noise), where b = arctan(e^{−λ_max/2}) and a = arctan(e^{−λ_min/2}) − b.
α² = sigmoid(λ) and σ² = sigmoid(−λ) are computed from λ directly (never as 1 − the other), so
both stay accurate in float32 at λ = ±20 where one of them rounds to 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def check_logsnr_range(logsnr_min: float, logsnr_max: float) -> None:
  """Raises ValueError unless λ_min < λ_max are finite floats."""
  if not (np.isfinite(logsnr_min) and np.isfinite(logsnr_max)):
    raise ValueError(
      f"diffusion.logsnr_min and diffusion.logsnr_max must be finite (paper: -20 "
      f"and 20), got [{logsnr_min}, {logsnr_max}]."
    )
  if logsnr_min >= logsnr_max:
    raise ValueError(
      f"diffusion.logsnr_min ({logsnr_min}) must be < diffusion.logsnr_max ({logsnr_max}); "
      "the paper uses -20 and 20."
    )


def _cosine_ab(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return float(a), float(b)


def logsnr_schedule_cosine(
  u: jax.Array, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> jax.Array:
  """λ(u) = −2 log tan(a u + b); decreasing in u, λ(0) = λ_max, λ(1) = λ_min.

  tan is ill-conditioned next to π/2 in float32 (λ(1) comes out ~1e-3 beyond λ_min), so the
  result is clipped to [λ_min, λ_max]: the endpoints are exact and the interior is unchanged.
  """
  check_logsnr_range(logsnr_min, logsnr_max)
  a, b = _cosine_ab(logsnr_min, logsnr_max)
  logsnr = -2.0 * jnp.log(jnp.tan(a * jnp.asarray(u, jnp.float32) + b))
  return jnp.clip(logsnr, logsnr_min, logsnr_max)


def alpha_sq(logsnr: jax.Array) -> jax.Array:
  """α² = sigmoid(λ)."""
  return jax.nn.sigmoid(logsnr)


def sigma_sq(logsnr: jax.Array) -> jax.Array:
  """σ² = sigmoid(−λ), accurate even where α² rounds to 1."""
  return jax.nn.sigmoid(-logsnr)


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(α_λ, σ_λ) through log_sigmoid, so neither underflows to 0/0 at |λ| = 20."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr)), jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))


def sampling_logsnrs(
  num_steps: int, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> jax.Array:
  """λ_1 < … < λ_T of Algorithm 2: λ(u_t) with u_t = (T − t)/(T − 1), from λ_min to λ_max."""
  if num_steps < 2:
    raise ValueError(f"sampling.num_steps must be >= 2, got {num_steps}.")
  u = jnp.linspace(1.0, 0.0, num_steps, dtype=jnp.float32)
  return logsnr_schedule_cosine(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
