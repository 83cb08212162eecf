"""CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): the unconditional prediction scaled by its
optimal projection s* before guidance, and no guidance output for the first K steps.

s* = ⟨ε_c, ε_∅⟩ / ‖ε_∅‖² per sample and ε̃ = (1 + w) ε_c − w s* ε_∅ (the paper's on the flow's
velocity, here on ε). "Zero-init" sets the velocity to 0 for the first K steps, which keeps the
sample at its initial noise; in this VP parameterisation the same is x̃ = 0 (ε̂ = z/σ), the data
mean, under which every sampler keeps z a scaled copy of the noise. s* = 1 and K = 0 is plain
classifier-free guidance. Defined for every sampler.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from cfg_jax import diffusion
from cfg_jax.guidance import cfg, core


def optimal_scale(*, eps_cond, eps_uncond) -> jnp.ndarray:
  """s* = ⟨ε_c, ε_∅⟩ / ‖ε_∅‖² per sample, [B, 1, ...] (0 where ε_∅ = 0)."""
  axes = tuple(range(1, eps_cond.ndim))
  dot = jnp.sum(eps_cond * eps_uncond, axis=axes, keepdims=True)
  sq = jnp.sum(jnp.square(eps_uncond), axis=axes, keepdims=True)
  return jnp.where(sq > 0, dot / jnp.where(sq > 0, sq, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class CFGZeroStar(core.Method):
  """Fields: cfg_zero.zero_steps (K, the first sampler steps with x̃ = 0),
  cfg_zero.optimized_scale (use s*; False: s* = 1)."""

  name = "cfg_zero"
  summary = "CFG-Zero*: the unconditional ε scaled by s*, x̃ = 0 for the first zero_steps steps"
  tag = "cfg_zero"
  plot_stem = "tradeoff_cfg_zero"
  file_prefix = "cfg_zero_"
  sweep_title = "CFG-Zero*, over w"
  settings_name = "cfg_zero"

  zero_steps: int = 0
  optimized_scale: bool = True

  @property
  def predicts_x(self) -> bool:  # only zero-init replaces x̃
    return self.zero_steps > 0

  @classmethod
  def from_config(cls, config) -> CFGZeroStar:
    c = config.cfg_zero
    return cls(zero_steps=int(c.zero_steps), optimized_scale=bool(c.optimized_scale))

  @classmethod
  def config_errors(cls, config) -> list[str]:
    k = config.cfg_zero.zero_steps
    return [] if k >= 0 else [f"cfg_zero.zero_steps must be >= 0 (0 = no zero-init), got {k}."]

  def describe(self, config, info):
    del config, info
    return {"zero_steps": self.zero_steps, "optimized_scale": self.optimized_scale}

  def guided(self, eps_fn, aux, step, state):
    del aux
    eps_c, eps_u = cfg.conditional_and_null(eps_fn, step)
    if self.optimized_scale:
      eps_u = optimal_scale(eps_cond=eps_c, eps_uncond=eps_u) * eps_u
    eps = core.guided_eps(eps_cond=eps_c, eps_uncond=eps_u, w=step.w)
    if not self.zero_steps:
      return core.Prediction(eps, eps_c), state
    zero = step.step < self.zero_steps  # x̃ = 0: the sample stays a scaled copy of its noise
    x = jnp.where(zero, 0.0, diffusion.x_from_eps(z=step.z, eps=eps, logsnr=step.logsnr))
    eps = jnp.where(zero, diffusion.eps_from_x(z=step.z, x=x, logsnr=step.logsnr), eps)
    return core.Prediction(eps, eps_c, x=x), state
