"""Config loading and the one validation path.

`load_config` reads a config file and fills the fields its dataset determines
(`fill_dataset_fields`). `validate` builds what a config describes — the sampler settings, the
U-Net under `jax.eval_shape`, the device mesh — and raises one `ConfigError` that lists every
problem with the field's name and the fix. Each rule lives next to the code it protects; only the
rules that guard no single object (training intervals, the evaluation sweep) are written here.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import os
import re
import runpy
import tokenize
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from cfg_jax.errors import UserError


class ConfigError(UserError, ValueError):
  """A config field has an invalid value; the message names the field and the fix."""


def read_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, as `--config=path:arg` reads it."""
  return runpy.run_path(path)["get_config"](arg)


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`read_config` with the dataset's fields filled in (as cfg_jax.main gets it)."""
  return fill_dataset_fields(read_config(path, arg))


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
  """None if `path` (e.g. 'training.batch_size') names a field of `config`, else the message
  for it, naming the section and the closest field: 'training.bacth_size: no such field; did you
  mean training.batch_size?'."""
  node, found, keys = config, [], path.split(".")
  for i, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{path}: no such field; {'.'.join(found)} is a value, not a section."
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      section = ".".join(found) or "the config"
      hint = (
        f"did you mean {'.'.join(found + close + keys[i + 1 :])}?"
        if close
        else f"the fields of {section} are {', '.join(node.keys())}."
      )
      return f"{path}: no such field; {hint}"
    node, found = node[key], found + [key]
  return None


def default_config_path(config_path: str) -> str:
  """configs/default.py, beside the config file at `config_path` (every config builds on it)."""
  return os.path.join(os.path.dirname(os.path.abspath(config_path)), "default.py")


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'section.key': value} of every field of `config`, in its order."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _attribute_path(node: ast.expr) -> str | None:
  """'training.batch_size' of the assignment target `c.training.batch_size`."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  return ".".join(reversed(names)) if isinstance(node, ast.Name) and names else None


def field_help(default_path: str) -> dict[str, str]:
  """{'section.key': one-line help} from the comments of configs/default.py: a field's help is
  the comment at the end of its assignment, or else the comment lines right above it."""
  with open(default_path) as f:
    source = f.read()
  lines = source.splitlines()
  comments = {
    tok.start[0]: tok.string.lstrip("#").strip()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
    if tok.type == tokenize.COMMENT
  }
  out = {}
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    path = _attribute_path(node.targets[0])
    if path is None:
      continue
    if node.end_lineno in comments and not lines[node.end_lineno - 1].lstrip().startswith("#"):
      out[path] = comments[node.end_lineno]
      continue
    above, n = [], node.lineno - 1
    while n in comments and lines[n - 1].lstrip().startswith("#"):
      above.insert(0, comments[n])
      n -= 1
    if above:
      out[path] = " ".join(above)
  return out


def changed_fields(
  config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
) -> dict[str, Any]:
  """{'section.key': value} of the fields of `config` whose value differs from `defaults`
  (those the dataset fills, None in `defaults`, are left out)."""
  base = leaves(defaults)
  return {
    k: v
    for k, v in leaves(config).items()
    if k not in base or (base[k] is not None and v != base[k])
  }


def describe(config: ml_collections.ConfigDict, *, default_path: str) -> str:
  """Every field of `config` as `section.key = value  # help` lines, the help from the comments
  of `default_path` (configs/default.py), with the default where the value differs from it."""
  defaults = leaves(read_config(default_path))
  helps = field_help(default_path)
  changed = changed_fields(config, read_config(default_path))
  rows = []
  for path, value in leaves(config).items():
    note = f" (default: {defaults[path]!r})" if path in changed and path in defaults else ""
    rows.append(f"{path} = {value!r}  # {helps.get(path, '(no help)')}{note}")
  return "\n".join(rows) + "\n"


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
  if ev.guidance not in ("cfg", "classifier", "auto"):
    err(
      f"evaluation.guidance must be 'cfg' (classifier-free, sweeps evaluation.w_values), "
      f"'classifier' (classifier guidance, sweeps evaluation.classifier_scales) or 'auto' "
      f"(autoguidance by the model of config.autoguidance, sweeps evaluation.w_values), got "
      f"{ev.guidance!r}."
    )
  if s.guidance not in ("cfg", "auto"):
    err(
      f"sampling.guidance must be 'cfg' (classifier-free) or 'auto' (autoguidance by the model "
      f"of config.autoguidance), got {s.guidance!r}."
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


def _guide_errors(config: ml_collections.ConfigDict) -> list[str]:
  """With autoguidance selected: the guide's own checks (cfg_jax/autoguidance.py) and, for a
  guide config of its own, its U-Net's."""
  from cfg_jax import autoguidance

  if not autoguidance.uses_autoguidance(config):
    return []
  errors = autoguidance.guide_errors(config)  # reports a config file that does not load
  try:
    guide = autoguidance.guide_config(config)
  except (OSError, ValueError, KeyError):
    return errors
  if guide is config:
    return errors
  return errors + [f"autoguidance.config: {e}" for e in _model_errors(guide)]


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Raises one ConfigError naming every invalid field of `config` and how to fix it.

  First fills the fields the dataset determines (`fill_dataset_fields`), then builds the U-Net
  (under jax.eval_shape: nothing is allocated or compiled), the sampler settings and the mesh over
  `num_devices` devices (default: every device of this run) and collects the errors each raises,
  with those of `_field_errors`, `_guide_errors` (autoguidance) and the distill and likelihood
  sections' rules.
  """
  import jax

  from cfg_jax import likelihood, schedules, students

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
  errors += _guide_errors(config)
  errors += students.config_errors(config)
  errors += likelihood.config_errors(config)
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
