"""CFG++ (Chung et al. 2024, arXiv 2406.08070): guide the x̂ of a DDIM step, re-noise with ε(z, ∅).

x̂_λ = (z − σ ε_λ)/α with ε_λ = ε(z, ∅) + l (ε(z, c) − ε(z, ∅)), then the DDIM step
z' = α' x̂_λ + σ' ε(z, ∅): the re-noising uses the unconditional ε, not the guided one. The
strength l ∈ [0, 1] (the paper's λ; here `l`, since λ is the log-SNR) replaces a large w: l = 0
is unconditional DDIM, l = 1 the conditional x̂ re-noised unconditionally. Defined for the DDIM
family only (`sampling.sampler=ddim`, any η).
"""

from __future__ import annotations

import dataclasses
import math

from cfg_jax.guidance import cfg, core


@dataclasses.dataclass(frozen=True)
class CFGPlusPlus(core.Method):
  """Field: cfgpp.scales (the l swept by --mode=evaluate; sampling.w_values carry l in
  --mode=sample)."""

  name = "cfgpp"
  summary = "CFG++: the guided x̂ re-noised with the unconditional ε (DDIM only)"
  strength_field = "scale"
  symbol = "l"
  tag = "cfgpp"
  plot_stem = "tradeoff_cfgpp"
  file_prefix = "cfgpp_"
  sweep_title = "CFG++, over l"
  samplers = ("ddim",)
  own_step_eps = True

  @classmethod
  def strength_errors(cls, values, *, field: str) -> list[str]:
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    return [f"{field} holds {bad}: CFG++'s l must be finite and >= 0 (paper: 0..1)."] if bad else []

  @classmethod
  def config_errors(cls, config) -> list[str]:
    return cls.strength_errors(config.cfgpp.scales, field="cfgpp.scales")

  def strengths(self, config) -> tuple[float, ...]:
    return tuple(config.cfgpp.scales)

  def guided(self, eps_fn, aux, step, state):
    del aux
    eps_c, eps_u = cfg.conditional_and_null(eps_fn, step)
    l = core.per_row(step.w, eps_c)
    return core.Prediction(eps_u + l * (eps_c - eps_u), eps_c, eps_step=eps_u), state
