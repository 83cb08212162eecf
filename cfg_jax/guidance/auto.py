"""Autoguidance (Karras et al. 2024): guide the conditional model with a weaker model of itself.

ε̃ = (1 + w) ε_θ(z, c) − w ε_guide(z, c) in the paper's w (w = 0: the conditional model), the guide
(`aux['guide']`) a conditional model of the same data that is smaller and/or trained for less:
the `autoguidance` section names its workdir, checkpoint step and config file. Every guided
evaluation runs both networks on the batch B. The recipe and the measured comparison are in
docs/samplers.md.
"""

from __future__ import annotations

import dataclasses

from cfg_jax.guidance import core


@dataclasses.dataclass(frozen=True)
class Autoguidance(core.Method):
  """Fields: autoguidance.workdir (required), autoguidance.checkpoint_step (−1: the latest),
  autoguidance.config ('' = the main config; 'path' or 'path:arg')."""

  name = "auto"
  summary = "autoguidance by the model of config.autoguidance"
  tag = "autoguidance"
  plot_stem = "tradeoff_ag"
  file_prefix = "auto_"
  sweep_title = "autoguidance, over w"
  settings_name = "autoguidance"

  workdir: str = ""
  checkpoint_step: int = -1
  config: str = ""

  @classmethod
  def from_config(cls, config) -> Autoguidance:
    ag = config.autoguidance
    return cls(workdir=ag.workdir, checkpoint_step=ag.checkpoint_step, config=ag.config)

  @classmethod
  def config_errors(cls, config) -> list[str]:
    if config.autoguidance.workdir:
      return []
    return [
      "autoguidance.workdir is empty: give the guide's workdir (a conditional model of the same "
      "data trained with --mode=train, e.g. configs/digits_guide.py, or the main workdir with an "
      "earlier autoguidance.checkpoint_step)."
    ]

  def networks(self, config) -> tuple[core.NetworkSpec, ...]:
    del config
    fields = {
      "workdir": "autoguidance.workdir",
      "step": "autoguidance.checkpoint_step",
      "config": "autoguidance.config",
    }
    spec = core.NetworkSpec(
      "guide", "model", self.workdir, self.checkpoint_step, self.config, fields
    )
    return (spec,)

  def describe(self, config, info):
    del config
    return {
      "workdir": self.workdir,
      "checkpoint_step": int(info.get("guide", self.checkpoint_step)),
      "config": self.config or "<main config>",
    }

  def feature_tag(self, config, info) -> str:
    return core.digest_tag(self.name, self.describe(config, info))

  def guided(self, eps_fn, aux, step, state):
    eps_c = eps_fn(step.z, step.logsnr, step.labels)
    eps_g = aux["guide"](step.z, step.logsnr, step.labels)
    return core.Prediction(
      core.guided_eps(eps_cond=eps_c, eps_uncond=eps_g, w=step.w), eps_c
    ), state
