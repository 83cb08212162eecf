"""Config loading and the one validation path.

`load_config` reads a config file and fills the fields its dataset determines
(`fill_dataset_fields`). `validate` builds what a config describes — the sampler settings, the
U-Net under `jax.eval_shape`, the device mesh — and raises one `ConfigError` that lists every
problem with the field's name and the fix. Each rule lives next to the code it protects; only the
rules that guard no single object (training intervals, the evaluation sweep) are written here.
"""

from __future__ import annotations

import dataclasses
import re
import runpy
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np


class ConfigError(ValueError):
  """A config field has an invalid value; the message names the field and the fix."""


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, with the dataset's fields filled in (as
  `--config=path:arg` gives it to cfg_jax.main)."""
  return fill_dataset_fields(runpy.run_path(path)["get_config"](arg))


def fill_dataset_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets data.image_size and data.num_classes from the dataset of data.name and returns `config`.

  Configs leave both unset; a value set by hand that differs from the dataset's is a ConfigError.
  """
  from cfg_jax import data  # lazily: imports tensorflow_datasets

  d = config.data
  try:
    spec = data.dataset_spec(d)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  height, width, _ = spec.image_shape
  derived = {
    "image_size": (height, f"gives {height}x{width} images"),
    "num_classes": (spec.num_classes, f"has {spec.num_classes} classes"),
  }
  errors = []
  for key, (value, what) in derived.items():
    if d[key] is None:
      d[key] = value
    elif d[key] != value:
      errors.append(
        f"data.{key}={d[key]} but dataset {d.name!r} {what}: data.{key} comes from "
        f"data.name, so leave it unset (drop --config.data.{key})."
      )
  if errors:
    raise ConfigError("\n".join(errors))
  return config


def _errors_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
  """[] if fn(*args, **kwargs) passes, else the message of the ValueError it raises."""
  try:
    fn(*args, **kwargs)
  except ValueError as e:
    return [str(e)]
  return []


def _qualify(message: str, section: str, keys) -> str:
  """`message` with every bare key of `section` written `section.key`: the U-Net's errors name
  its attributes, which are the keys of config.model."""
  names = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
  return re.sub(rf"(?<![\w.])({names})\b", rf"{section}.\1", message)


def _model_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The U-Net's own checks, run by its init under jax.eval_shape (nothing is allocated)."""
  from cfg_jax import models

  m = config.model
  try:
    model = models.create_model(config)
  except TypeError as e:  # its one conversion: jnp.dtype(model.dtype)
    return [f"model.dtype={m.dtype!r}: {e}; use 'float32', 'bfloat16' or 'float16'."]
  try:
    models.count_params(model, models.image_shape(config))
  except (ValueError, TypeError) as e:
    return [_qualify(str(e), "model", m.keys())]
  return []


def _sampler_errors(config: ml_collections.ConfigDict) -> list[str]:
  """SamplerConfig's checks, for sampling.num_steps and every T of the evaluation sweep."""
  from cfg_jax import sampling

  try:
    sampler = sampling.SamplerConfig.from_config(config)
  except ValueError as e:
    return [str(e)]
  return [
    f"evaluation.num_steps_values holds {t}: {e}"
    for t in config.evaluation.num_steps_values
    for e in _errors_of(dataclasses.replace, sampler, num_steps=t)
  ]


def _mesh_errors(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """The mesh plan of cfg_jax/sharding.py on `num_devices` devices and the batch split over it."""
  from cfg_jax import sharding

  errors = _errors_of(sharding.mesh_config, config)
  try:
    mesh_shape = sharding.mesh_axis_sizes(num_devices, config.mesh.fsdp)
  except ValueError as e:
    return errors + [str(e)]
  return errors + _errors_of(
    sharding.check_batch_size, config.training.batch_size, mesh_shape, field="training.batch_size"
  )


def _field_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The rules that guard no single object: training scalars, sample labels and the evaluation
  sweep; p_uncond and w through their checks in cfg_jax/guidance.py."""
  from cfg_jax import classifier_guidance, guidance

  errors = _errors_of(guidance.check_p_uncond, config.guidance.p_uncond)
  err = errors.append
  for field in ("guidance.w_values", "sampling.w_values", "evaluation.w_values"):
    section, _, key = field.partition(".")
    errors += _errors_of(guidance.check_w, config[section][key], field=field)

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
  if ev.guidance not in ("cfg", "classifier"):
    err(
      f"evaluation.guidance must be 'cfg' (classifier-free, sweeps evaluation.w_values) or "
      f"'classifier' (classifier guidance, sweeps evaluation.classifier_scales), got "
      f"{ev.guidance!r}."
    )
  for sc in ev.classifier_scales:
    if not np.isfinite(sc) or sc < 0:
      err(f"evaluation.classifier_scales holds {sc}: a classifier scale must be finite and >= 0.")
  if ev.classifier_model_labels not in classifier_guidance.MODEL_LABELS:
    err(
      f"evaluation.classifier_model_labels must be 'cond' (eps(z, c), a conditional model) or "
      f"'null' (eps(z, null), the unconditional model of p_uncond = 1), got "
      f"{ev.classifier_model_labels!r}."
    )
  elif (
    ev.guidance == "classifier"
    and ev.classifier_model_labels == "cond"
    and config.guidance.p_uncond >= 1.0
  ):
    err(
      "evaluation.classifier_model_labels='cond' with guidance.p_uncond=1: this model never saw "
      "a class label, so eps(z, c) is meaningless; set "
      "--config.evaluation.classifier_model_labels=null."
    )
  return errors


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Raises one ConfigError naming every invalid field of `config` and how to fix it.

  First fills the fields the dataset determines (`fill_dataset_fields`), then builds the U-Net
  (under jax.eval_shape: nothing is allocated or compiled), the sampler settings and the mesh over
  `num_devices` devices (default: every device of this run) and collects the errors each raises,
  with those of `_field_errors`.
  """
  import jax

  from cfg_jax import schedules, students

  errors: list[str] = []
  try:
    fill_dataset_fields(config)
  except ConfigError as e:  # the U-Net needs the dataset's image size: not built
    errors += str(e).splitlines()
  else:
    errors += _model_errors(config)
  # Before SamplerConfig, which stops at a bad λ range before its own fields.
  errors += _errors_of(
    schedules.check_logsnr_range, config.diffusion.logsnr_min, config.diffusion.logsnr_max
  )
  errors += _sampler_errors(config)
  errors += _mesh_errors(config, num_devices or jax.device_count())
  errors += _field_errors(config)
  errors += students.config_errors(config)
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
