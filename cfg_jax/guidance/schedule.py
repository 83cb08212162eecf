"""Guidance-weight schedules (Wang et al. 2024, arXiv 2404.13040): classifier-free guidance whose
strength varies along the sampling path instead of staying constant.

w_t = w · f(s) with s ∈ [0, 1] the progress from noise to data, either in the sampler's steps
(s = 1 − u(λ), u the cosine schedule's time: s = t / (T − 1) on the sampling grid) or in log-SNR
(s = (λ − λ_min)/(λ_max − λ_min)), and f linear (2s) or cosine (1 − cos πs): increasing, the
shapes the paper finds best, each with mean 1 so that w stays the average strength. A constant f
is plain classifier-free guidance; the guidance interval (`sampling.guidance_interval`) is the
box-shaped schedule. Defined for every sampler.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from cfg_jax.guidance import cfg, core

SHAPES = ("constant", "linear", "cosine")
VARIABLES = ("step", "logsnr")


def unit_time(logsnr: jax.Array, *, logsnr_min: float, logsnr_max: float) -> jax.Array:
  """u(λ) of the cosine schedule λ(u) = −2 log tan(a u + b): 0 at λ_max, 1 at λ_min."""
  b = math.atan(math.exp(-0.5 * logsnr_max))
  a = math.atan(math.exp(-0.5 * logsnr_min)) - b
  return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))) - b) / a


def progress(logsnr: jax.Array, *, variable: str, logsnr_min: float, logsnr_max: float):
  """s ∈ [0, 1] from noise (λ_min) to data (λ_max), in steps or in log-SNR."""
  if variable == "step":
    s = 1.0 - unit_time(logsnr, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  else:
    s = (jnp.asarray(logsnr, jnp.float32) - logsnr_min) / (logsnr_max - logsnr_min)
  return jnp.clip(s, 0.0, 1.0)


def weight(s: jax.Array, *, shape: str) -> jax.Array:
  """f(s): constant 1, linear 2s, cosine 1 − cos πs (each of mean 1 over s ∈ [0, 1])."""
  if shape == "constant":
    return jnp.ones_like(s)
  if shape == "linear":
    return 2.0 * s
  return 1.0 - jnp.cos(jnp.pi * s)


@dataclasses.dataclass(frozen=True)
class ScheduledCFG(core.Method):
  """Fields: w_schedule.shape (constant | linear | cosine), w_schedule.variable (step | logsnr);
  λ_min / λ_max from the diffusion section."""

  name = "cfg_schedule"
  summary = "classifier-free guidance with w along the path: w f(s), f linear or cosine in s"
  tag = "cfg_schedule"
  plot_stem = "tradeoff_cfg_schedule"
  file_prefix = "cfg_schedule_"
  sweep_title = "scheduled CFG, over mean w"
  settings_name = "w_schedule"

  shape: str = "linear"
  variable: str = "step"
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0

  def __post_init__(self):
    if self.shape not in SHAPES or self.variable not in VARIABLES:
      raise ValueError(
        f"w_schedule.shape must be one of {SHAPES} and w_schedule.variable one of {VARIABLES}, "
        f"got {self.shape!r}, {self.variable!r}."
      )

  @classmethod
  def from_config(cls, config) -> ScheduledCFG:
    s, d = config.w_schedule, config.diffusion
    return cls(s.shape, s.variable, d.logsnr_min, d.logsnr_max)

  @classmethod
  def config_errors(cls, config) -> list[str]:
    s, errors = config.w_schedule, []
    if s.shape not in SHAPES:
      errors.append(f"w_schedule.shape must be one of {SHAPES}, got {s.shape!r}.")
    if s.variable not in VARIABLES:
      errors.append(f"w_schedule.variable must be one of {VARIABLES}, got {s.variable!r}.")
    return errors

  def describe(self, config, info):
    del config, info
    return {"shape": self.shape, "variable": self.variable}

  def guided(self, eps_fn, aux, step, state):
    del aux
    eps_c, eps_u = cfg.conditional_and_null(eps_fn, step)
    w = step.w
    if self.shape != "constant":
      s = progress(
        step.logsnr, variable=self.variable, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max
      )
      w = w * weight(s, shape=self.shape)
    return core.Prediction(core.guided_eps(eps_cond=eps_c, eps_uncond=eps_u, w=w), eps_c), state
