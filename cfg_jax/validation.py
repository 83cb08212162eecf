"""The one validation path: every problem of a config, with the field's name and the fix, in one
`ConfigError`, before anything is compiled.

`validate` fills the fields the dataset determines, then collects the checks of what the config
describes — the U-Net (its architecture checks, then its init under `jax.eval_shape`), the sampler
settings, the device mesh and the batch split, the guidance method of each section and the
networks it names (on disk), the classifier, distillation and likelihood sections — each rule
written once, next to the code it protects; only the rules that guard no single object (training
scalars, sample labels, the evaluation sweep) are written here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from cfg_jax import (
  config_lib,
  guidance,
  likelihood,
  models,
  networks,
  sampling,
  schedules,
  sharding,
  students,
)
from cfg_jax.config_lib import ConfigError
from cfg_jax.models import unet


def errors_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
  """[] if fn(*args, **kwargs) passes, else the message of the ValueError it raises."""
  try:
    fn(*args, **kwargs)
  except ValueError as e:
    return [str(e)]
  return []


def model_errors(config: ml_collections.ConfigDict, *, prefix: str = "model.") -> list[str]:
  """The network's checks: the U-Net's architecture checks on config.model (model.name 'unet'),
  then its init under jax.eval_shape (nothing allocated), which runs the DiT's own checks."""
  shape = models.image_shape(config)
  if config.model.name == "unet":
    errors = errors_of(unet.check_architecture, config.model, shape, prefix=prefix)
    if errors:
      return errors
  try:
    model = models.create_model(config)
  except (ValueError, TypeError) as e:
    return [str(e)]
  return errors_of(models.count_params, model, shape)


def classifier_errors(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """The `classifier` section: its architecture, batch split and training scalars."""
  cc = config.classifier
  shape = models.image_shape(config)  # the encoder may have 0 residual blocks per level
  errors = errors_of(unet.check_architecture, cc, shape, prefix="classifier.", min_res_blocks=0)
  errors += errors_of(
    sharding.check_batch_size, cc.batch_size, (num_devices, 1), field="classifier.batch_size"
  )
  if cc.num_train_steps < 0:
    errors.append(f"classifier.num_train_steps must be >= 0, got {cc.num_train_steps}.")
  if not cc.learning_rate > 0:
    errors.append(f"classifier.learning_rate must be > 0, got {cc.learning_rate}.")
  return errors


def sampler_errors(config: ml_collections.ConfigDict) -> list[str]:
  """SamplerConfig's checks, for sampling.num_steps and every T of the evaluation sweep."""
  try:
    sampler = sampling.SamplerConfig.from_config(config)
  except ValueError as e:
    return [str(e)]
  return [
    f"evaluation.num_steps_values holds {t}: {e}"
    for t in config.evaluation.num_steps_values
    for e in errors_of(dataclasses.replace, sampler, num_steps=t)
  ]


def mesh_errors(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """The mesh plan of cfg_jax/sharding.py on `num_devices` devices and the batch split over it."""
  errors = errors_of(sharding.mesh_config, config)
  try:
    mesh_shape = sharding.mesh_axis_sizes(num_devices, config.mesh.fsdp)
  except ValueError as e:
    return errors + [str(e)]
  return errors + errors_of(
    sharding.check_batch_size, config.training.batch_size, mesh_shape, field="training.batch_size"
  )


def field_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The rules that guard no single object: training scalars, sample labels and the evaluation
  sweep; p_uncond and w through their checks in cfg_jax/guidance."""
  errors = errors_of(guidance.check_p_uncond, config.guidance.p_uncond)
  err = errors.append
  for field in ("guidance.w_values", "evaluation.w_values"):
    section, _, key = field.partition(".")
    errors += errors_of(guidance.check_w, config[section][key], field=field)
  if config.sampling.guidance in guidance.METHODS:  # the strengths of that method
    method = guidance.get(config.sampling.guidance)
    errors += method.strength_errors(config.sampling.w_values, field="sampling.w_values")

  t = config.training
  if t.num_train_steps < 0:
    err(f"training.num_train_steps must be >= 0, got {t.num_train_steps}.")
  if t.learning_rate <= 0 or not np.isfinite(t.learning_rate):
    err(f"training.learning_rate must be positive, got {t.learning_rate}.")
  if not 0.0 <= t.ema_decay < 1.0:
    err(f"training.ema_decay must be in [0, 1), got {t.ema_decay}.")
  for key in (
    "log_every_steps",
    "checkpoint_every_steps",
    "sample_every_steps",
    "max_consecutive_nonfinite",
  ):
    if t[key] < 0:
      err(f"training.{key} must be >= 0 (0 disables), got {t[key]}.")

  s, num_classes = config.sampling, config.data.num_classes
  for y in s.labels:
    if num_classes is not None and not 0 <= y < num_classes:
      err(
        f"sampling.labels holds {y}, outside [0, {num_classes}) for data.name={config.data.name!r}."
      )
  if s.num_samples < 1 or s.batch_size < 1:
    err(
      f"sampling.num_samples ({s.num_samples}) and sampling.batch_size ({s.batch_size}) must "
      "be >= 1."
    )

  ev = config.evaluation
  if ev.num_samples < 10:
    err(
      f"evaluation.num_samples must be >= 10 (the Inception score uses 10 splits), got "
      f"{ev.num_samples}."
    )
  if ev.pr_k < 1 or ev.batch_size < 1:
    err(f"evaluation.pr_k ({ev.pr_k}) and evaluation.batch_size ({ev.batch_size}) must be >= 1.")
  if ev.feature_batch_size < 0:
    err(
      f"evaluation.feature_batch_size must be >= 1, or 0 (auto: 50 on CPU, 500 on GPU / TPU), "
      f"got {ev.feature_batch_size}."
    )
  return errors


def network_errors(config: ml_collections.ConfigDict, workdir: str | None) -> list[str]:
  """The networks the selected guidance methods sample with: on disk (networks.spec_errors) and,
  for a model with a config of its own, that config's U-Net."""
  errors = []
  where = workdir
  if workdir is not None and config.distill.student and not students.config_errors(config):
    where = students.resolve(config, workdir)[1]
  for name in sorted(guidance.selected(config) & set(guidance.METHODS)):
    if guidance.get(name).config_errors(config):
      continue  # already reported, e.g. an empty workdir
    method = guidance.get(name).from_config(config)
    for spec in method.networks(config):
      errors += networks.spec_errors(config, spec, workdir=where)
      if spec.kind == "model" and spec.config:
        try:
          other = networks.model_config(config, spec)
        except (OSError, ValueError, KeyError):
          continue  # spec_errors says so
        errors += [f"{spec.fields['config']}: {e}" for e in model_errors(other)]
  return errors


def validate(
  config: ml_collections.ConfigDict,
  *,
  num_devices: int | None = None,
  workdir: str | None = None,
  classifier: bool = False,
) -> None:
  """Raises one ConfigError naming every invalid field of `config` and how to fix it.

  First fills the fields the dataset determines (`config_lib.fill_dataset_fields`), then builds
  the U-Net under jax.eval_shape (nothing is allocated or compiled), the sampler settings and the
  mesh over `num_devices` devices (default: every device of this run) and collects the errors
  each raises, with the field rules, the guidance methods' and their networks' (whose
  checkpoints are looked for in `workdir`, the job's, where a network has no workdir of its
  own), the classifier section's (when `classifier`, --mode=train_classifier, or when classifier
  guidance is selected), and the distill and likelihood sections' rules.
  """
  num_devices = num_devices or jax.device_count()
  errors: list[str] = []
  try:
    config_lib.fill_dataset_fields(config)
  except ConfigError as e:  # the networks need the dataset's image size: not built
    errors += str(e).splitlines()
    filled = False
  else:
    filled = True
    errors += model_errors(config)
    if classifier or "classifier" in guidance.selected(config):
      errors += classifier_errors(config, num_devices)
  # Before SamplerConfig, which stops at a bad λ range before its own fields.
  errors += errors_of(
    schedules.check_logsnr_range, config.diffusion.logsnr_min, config.diffusion.logsnr_max
  )
  errors += sampler_errors(config)
  errors += mesh_errors(config, num_devices)
  errors += field_errors(config)
  errors += guidance.config_errors(config)
  if filled:
    errors += network_errors(config, workdir)
  errors += students.config_errors(config)
  errors += likelihood.config_errors(config)
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
