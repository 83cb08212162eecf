"""APG, adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416): CFG on the denoised
prediction with the update split along x̂_c and mostly kept orthogonal to it.

Δ = x̂_c − x̂_∅ (x̂ = (z − σ ε)/α), as a running average with momentum β (v_t = Δ_t + β v_{t−1}),
rescaled to norm ≤ r per sample, split into Δ∥ (along x̂_c) and Δ⊥ = Δ − Δ∥, and
x̃ = x̂_c + w (Δ⊥ + η Δ∥) in the paper's w (the APG paper's scale is 1 + w). η = 1, r = ∞, β = 0
is classifier-free guidance on x̂ (equal to it on ε); the paper uses η = 0 and β < 0. Acts on x̂,
so it is defined for every sampler.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from cfg_jax import diffusion
from cfg_jax.guidance import cfg, core


def _sum(x: jax.Array) -> jax.Array:
  """Per-sample sum over all non-batch axes, kept as [B, 1, ...]."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def projected_update(
  *, x_cond: jax.Array, delta: jax.Array, eta: float, norm_threshold: float
) -> jax.Array:
  """Δ⊥ + η Δ∥ of Δ (first rescaled to norm ≤ r when r > 0) against x̂_c, per sample."""
  if norm_threshold > 0:
    norm = jnp.sqrt(_sum(jnp.square(delta)))
    delta = delta * jnp.minimum(1.0, norm_threshold / jnp.maximum(norm, 1e-12))
  unit = x_cond / jnp.maximum(jnp.sqrt(_sum(jnp.square(x_cond))), 1e-12)
  parallel = _sum(delta * unit) * unit
  return (delta - parallel) + eta * parallel


@dataclasses.dataclass(frozen=True)
class APG(core.Method):
  """Fields: apg.eta (η, the share of Δ∥ kept), apg.norm_threshold (r; 0 = none), apg.momentum
  (β in (−1, 1))."""

  name = "apg"
  summary = "adaptive projected guidance on x̂: the update's part along x̂_c scaled by eta"
  tag = "apg"
  plot_stem = "tradeoff_apg"
  file_prefix = "apg_"
  sweep_title = "APG, over w"
  settings_name = "apg"
  predicts_x = True

  eta: float = 0.0
  norm_threshold: float = 0.0
  momentum: float = 0.0

  @classmethod
  def from_config(cls, config) -> APG:
    a = config.apg
    return cls(eta=a.eta, norm_threshold=a.norm_threshold, momentum=a.momentum)

  @classmethod
  def config_errors(cls, config) -> list[str]:
    a, errors = config.apg, []
    if not math.isfinite(a.eta) or a.eta < 0:
      errors.append(f"apg.eta must be finite and >= 0 (paper: 0; 1 = plain CFG), got {a.eta}.")
    if not math.isfinite(a.norm_threshold) or a.norm_threshold < 0:
      errors.append(f"apg.norm_threshold must be >= 0 (0 = no threshold), got {a.norm_threshold}.")
    if not -1.0 < a.momentum < 1.0:
      errors.append(f"apg.momentum must be in (-1, 1) (paper: -0.5; 0 = none), got {a.momentum}.")
    return errors

  def describe(self, config, info):
    del config, info
    return {"eta": self.eta, "norm_threshold": self.norm_threshold, "momentum": self.momentum}

  def init_state(self, z):
    return jnp.zeros_like(z)  # the running average of Δ

  def guided(self, eps_fn, aux, step, state):
    del aux
    eps_c, eps_u = cfg.conditional_and_null(eps_fn, step)
    x_of = lambda eps: diffusion.x_from_eps(z=step.z, eps=eps, logsnr=step.logsnr)
    x_c = x_of(eps_c)
    delta = x_c - x_of(eps_u)
    if self.momentum:
      delta = delta + self.momentum * state
    update = projected_update(
      x_cond=x_c, delta=delta, eta=self.eta, norm_threshold=self.norm_threshold
    )
    x = x_c + core.per_row(step.w, x_c) * update
    return core.Prediction(
      diffusion.eps_from_x(z=step.z, x=x, logsnr=step.logsnr), eps_c, x=x
    ), delta
