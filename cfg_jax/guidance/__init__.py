"""Guidance: one interface (`core.Method`) for every method, and the registry that the config's
`sampling.guidance` / `evaluation.guidance` name.

Each method is one small module: `cfg` (classifier-free, the paper's), `classifier` (classifier
guidance), `auto` (autoguidance), `cfgpp` (CFG++), `apg` (adaptive projected guidance),
`cfg_zero` (CFG-Zero*), `icg` (independent-condition guidance), `schedule` (w schedules);
`variants` holds the interval, rescale and thresholding rules that apply to all of them. Pure
math: this package imports jax alone. The math beside each paper's is in docs/samplers.md.
"""

from __future__ import annotations

from cfg_jax.guidance.apg import APG
from cfg_jax.guidance.auto import Autoguidance
from cfg_jax.guidance.cfg import ClassifierFree, check_p_uncond, drop_labels
from cfg_jax.guidance.cfg_zero import CFGZeroStar
from cfg_jax.guidance.cfgpp import CFGPlusPlus
from cfg_jax.guidance.classifier import ClassifierGuidance
from cfg_jax.guidance.core import (
  Aux,
  EpsFn,
  Method,
  NetworkSpec,
  Prediction,
  Step,
  check_w,
  guided_eps,
  paired_forward,
  per_row,
)
from cfg_jax.guidance.icg import ICG
from cfg_jax.guidance.schedule import ScheduledCFG
from cfg_jax.guidance.variants import (
  THRESHOLDING_MODES,
  dynamic_threshold,
  in_interval,
  interval_from_sigmas,
  per_sample_std,
  rescale_guided,
  static_threshold,
  threshold,
)

METHODS: dict[str, type[Method]] = {
  m.name: m
  for m in (
    ClassifierFree,
    ClassifierGuidance,
    Autoguidance,
    CFGPlusPlus,
    APG,
    CFGZeroStar,
    ICG,
    ScheduledCFG,
  )
}
CFG = ClassifierFree()  # the default of every sampler
SECTIONS = ("sampling", "evaluation")  # the config sections whose `guidance` field picks one


def get(name: str) -> type[Method]:
  """The method class registered as `name`; ValueError listing the valid names otherwise."""
  if name not in METHODS:
    raise ValueError(f"unknown guidance {name!r}; valid: {', '.join(METHODS)}.")
  return METHODS[name]


def from_config(config, *, section: str) -> Method:
  """The method that `config.<section>.guidance` selects, with its settings from `config`."""
  return get(config[section].guidance).from_config(config)


def selected(config) -> set[str]:
  """The names of the methods that sampling.guidance and evaluation.guidance select."""
  return {config[s].guidance for s in SECTIONS}


def config_errors(config) -> list[str]:
  """An unknown method name in either section, and the config errors of the selected ones."""
  errors = []
  for s in SECTIONS:
    if config[s].guidance not in METHODS:
      errors.append(
        f"{s}.guidance={config[s].guidance!r} is not a guidance method; valid: "
        + ", ".join(f"'{n}' ({m.summary})" for n, m in METHODS.items())
        + "."
      )
  for name in sorted(selected(config) & set(METHODS)):
    method = METHODS[name]
    errors += method.config_errors(config)
    if method.samplers is not None and config.sampling.sampler not in method.samplers:
      errors.append(
        f"{name} ({method.summary}) is defined for sampling.sampler in {method.samplers}, got "
        f"{config.sampling.sampler!r}: set --config.sampling.sampler={method.samplers[0]}."
      )
  return errors


__all__ = [
  "APG",
  "Aux",
  "Autoguidance",
  "CFGPlusPlus",
  "CFGZeroStar",
  "ICG",
  "ScheduledCFG",
  "CFG",
  "ClassifierFree",
  "ClassifierGuidance",
  "EpsFn",
  "METHODS",
  "Method",
  "NetworkSpec",
  "Prediction",
  "Step",
  "THRESHOLDING_MODES",
  "check_p_uncond",
  "check_w",
  "config_errors",
  "drop_labels",
  "dynamic_threshold",
  "from_config",
  "get",
  "guided_eps",
  "in_interval",
  "interval_from_sigmas",
  "paired_forward",
  "per_row",
  "per_sample_std",
  "rescale_guided",
  "selected",
  "static_threshold",
  "threshold",
]
