"""Config helpers: sibling config imports, `file.py:key=value` arguments, and validation.

`validate` checks every field that can be wrong before anything is compiled and raises one
`ConfigError` listing each problem with the field's name and the fix.
"""

from __future__ import annotations

import importlib.util
import math
import os
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np


class ConfigError(ValueError):
  """A config field has an invalid value; the message names the field and the fix."""


def load_sibling(config_file: str, name: str) -> ModuleType:
  """Imports `<dir of config_file>/<name>.py`, so configs/*.py can build on configs/default.py
  wherever the repository lives (config files are loaded by path, not as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"cfg_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument `k1=v1,k2=v2` (or a bare flag `k`, meaning True) over `defaults`.

  Values are converted to the type of the default. Unknown keys are an error.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; valid ones: {sorted(defaults)}.")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ("", "1", "true", "yes")
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def _pow2_levels(image_size: int, levels: int) -> list[int]:
  return [image_size // 2**i for i in range(levels)]


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
             process_count: int = 1, dataset_spec: Any = None) -> None:
  """Raises ConfigError naming every invalid field (and how to fix it)."""
  errors: list[str] = []
  err = errors.append
  d, m, diff, g, t, s = (config.data, config.model, config.diffusion, config.guidance,
                         config.training, config.sampling)

  # Diffusion.
  if not (np.isfinite(diff.logsnr_min) and np.isfinite(diff.logsnr_max)):
    err("diffusion.logsnr_min/logsnr_max must be finite (paper: -20 and 20).")
  elif diff.logsnr_min >= diff.logsnr_max:
    err(f"diffusion.logsnr_min ({diff.logsnr_min}) must be < diffusion.logsnr_max "
        f"({diff.logsnr_max}); the paper uses -20 and 20.")

  # Guidance.
  if not 0.0 <= g.p_uncond <= 1.0:
    err(f"guidance.p_uncond must be in [0, 1] (paper: 0.1, 0.2 or 0.5), got {g.p_uncond}.")
  for name in ("w_values",):
    for w in g[name]:
      if not np.isfinite(w) or w < -1.0:
        err(f"guidance.{name} holds {w}: w must be finite and >= -1 (w = 0 is the conditional "
            "model, w = -1 the unconditional one; the paper sweeps 0..4). Note: w = s - 1 for "
            "codebases that use a guidance scale s.")

  # Data / model geometry.
  if d.num_classes < 1:
    err(f"data.num_classes must be >= 1, got {d.num_classes}.")
  if dataset_spec is not None:
    if d.num_classes != dataset_spec.num_classes:
      err(f"data.num_classes={d.num_classes} but dataset {d.name!r} has "
          f"{dataset_spec.num_classes} classes; set --config.data.num_classes="
          f"{dataset_spec.num_classes}.")
    if d.image_size != dataset_spec.image_shape[0]:
      err(f"data.image_size={d.image_size} but dataset {d.name!r} gives "
          f"{dataset_spec.image_shape[0]}x{dataset_spec.image_shape[1]} images; set "
          f"--config.data.image_size={dataset_spec.image_shape[0]}.")
  levels = len(m.ch_mult)
  if levels < 1 or any(int(x) < 1 for x in m.ch_mult):
    err(f"model.ch_mult must be a non-empty tuple of positive ints, got {m.ch_mult}.")
  elif d.image_size % 2 ** (levels - 1):
    err(f"data.image_size={d.image_size} cannot be halved {levels - 1} times for model.ch_mult "
        f"of length {levels}: use an image size divisible by {2 ** (levels - 1)} or fewer levels.")
  else:
    sizes = _pow2_levels(d.image_size, levels)
    for r in m.attn_resolutions:
      if r not in sizes:
        err(f"model.attn_resolutions holds {r}, but the feature maps of a {d.image_size}px image "
            f"with {levels} levels are {sizes}; pick from those.")
    for i, (size, mult) in enumerate(zip(sizes, m.ch_mult)):
      c = m.ch * mult
      if size in m.attn_resolutions and m.head_channels > 0 and c % m.head_channels:
        err(f"model.head_channels={m.head_channels} does not divide the {c} channels at "
            f"resolution {size}.")
      if size in m.attn_resolutions and m.head_channels <= 0 and (m.num_heads <= 0 or
                                                                    c % m.num_heads):
        err(f"model.num_heads={m.num_heads} must be positive and divide the {c} channels at "
            f"resolution {size} (or set model.head_channels > 0).")
  if m.ch < 1 or m.num_res_blocks < 1:
    err(f"model.ch ({m.ch}) and model.num_res_blocks ({m.num_res_blocks}) must be >= 1.")
  if not 0.0 <= m.dropout < 1.0:
    err(f"model.dropout must be in [0, 1), got {m.dropout}.")
  if m.dtype not in ("float32", "bfloat16", "float16"):
    err(f"model.dtype must be 'float32', 'bfloat16' or 'float16', got {m.dtype!r}.")

  # Mesh (cfg_jax/sharding.py): data = devices / fsdp rows by fsdp columns.
  mesh_shape = ""
  if "mesh" in config:
    fsdp = config.mesh.fsdp
    if fsdp < 1:
      err(f"mesh.fsdp must be >= 1 (1 = data parallel, everything replicated), got {fsdp}.")
    elif num_devices and num_devices % fsdp:
      divisors = [k for k in range(1, num_devices + 1) if num_devices % k == 0]
      err(f"mesh.fsdp={fsdp} does not divide the {num_devices} devices (the mesh is data = "
          f"devices / fsdp by fsdp); use one of {divisors}, e.g. --config.mesh.fsdp="
          f"{max(k for k in divisors if k <= fsdp)}.")
    elif num_devices:
      mesh_shape = f" of the mesh (data={num_devices // fsdp} x fsdp={fsdp})"
    if config.mesh.fsdp_min_size < 0:
      err(f"mesh.fsdp_min_size must be >= 0 (arrays with fewer elements stay replicated), got "
          f"{config.mesh.fsdp_min_size}.")

  # Training.
  if t.batch_size < 1:
    err(f"training.batch_size must be >= 1, got {t.batch_size}.")
  elif num_devices and t.batch_size % num_devices:
    err(f"training.batch_size={t.batch_size} is not divisible by the {num_devices} devices"
        f"{mesh_shape}: the batch splits over every device; use a multiple of {num_devices}, "
        f"e.g. {math.ceil(t.batch_size / num_devices) * num_devices}.")
  elif t.batch_size % process_count:
    err(f"training.batch_size={t.batch_size} is not divisible by the {process_count} processes.")
  if t.num_train_steps < 0:
    err(f"training.num_train_steps must be >= 0, got {t.num_train_steps}.")
  if t.learning_rate <= 0 or not np.isfinite(t.learning_rate):
    err(f"training.learning_rate must be positive, got {t.learning_rate}.")
  if not 0.0 <= t.ema_decay < 1.0:
    err(f"training.ema_decay must be in [0, 1), got {t.ema_decay}.")
  for key in ("log_every_steps", "checkpoint_every_steps", "sample_every_steps",
              "max_consecutive_nonfinite"):
    if t[key] < 0:
      err(f"training.{key} must be >= 0 (0 disables), got {t[key]}.")

  # Sampling.
  if s.num_steps < 2:
    err(f"sampling.num_steps must be >= 2 (paper: 256), got {s.num_steps}.")
  if not 0.0 <= s.v <= 1.0:
    err(f"sampling.v must be in [0, 1] (paper: 0.3 at 64x64, 0.2 at 128x128), got {s.v}.")
  for w in s.w_values:
    if not np.isfinite(w) or w < -1.0:
      err(f"sampling.w_values holds {w}: w must be finite and >= -1.")
  for y in s.labels:
    if not 0 <= y < d.num_classes:
      err(f"sampling.labels holds {y}, outside [0, {d.num_classes}) for data.num_classes="
          f"{d.num_classes}.")
  if s.num_samples < 1 or s.batch_size < 1:
    err(f"sampling.num_samples ({s.num_samples}) and sampling.batch_size ({s.batch_size}) must "
        "be >= 1.")

  # Evaluation.
  ev = config.evaluation
  for w in ev.w_values:
    if not np.isfinite(w) or w < -1.0:
      err(f"evaluation.w_values holds {w}: w must be finite and >= -1.")
  if ev.num_samples < 10:
    err(f"evaluation.num_samples must be >= 10 (the Inception score uses 10 splits), got "
        f"{ev.num_samples}.")
  for t_ in ev.num_steps_values:
    if t_ < 2:
      err(f"evaluation.num_steps_values holds {t_}; every T must be >= 2.")
  if ev.pr_k < 1 or ev.batch_size < 1:
    err(f"evaluation.pr_k ({ev.pr_k}) and evaluation.batch_size ({ev.batch_size}) must be >= 1.")
  if ev.guidance not in ("cfg", "classifier"):
    err(f"evaluation.guidance must be 'cfg' (classifier-free, sweeps evaluation.w_values) or "
        f"'classifier' (classifier guidance, sweeps evaluation.classifier_scales), got "
        f"{ev.guidance!r}.")
  for sc in ev.classifier_scales:
    if not np.isfinite(sc) or sc < 0:
      err(f"evaluation.classifier_scales holds {sc}: a classifier scale must be finite and >= 0.")
  if ev.classifier_model_labels not in ("cond", "null"):
    err(f"evaluation.classifier_model_labels must be 'cond' (eps(z, c), a conditional model) or "
        f"'null' (eps(z, null), the unconditional model of p_uncond = 1), got "
        f"{ev.classifier_model_labels!r}.")
  elif (ev.guidance == "classifier" and ev.classifier_model_labels == "cond"
        and g.p_uncond >= 1.0):
    err("evaluation.classifier_model_labels='cond' with guidance.p_uncond=1: this model never saw "
        "a class label, so eps(z, c) is meaningless; set "
        "--config.evaluation.classifier_model_labels=null.")

  # Sampling: samplers and guidance variants (see cfg_jax/sampling.py).
  samplers = ("ancestral", "ddim", "euler", "heun")
  if s.sampler not in samplers:
    err(f"sampling.sampler must be one of {samplers}, got {s.sampler!r}.")
  if not 0.0 <= s.eta <= 1.0:
    err(f"sampling.eta must be in [0, 1] (0 = deterministic DDIM, 1 = ancestral noise), got "
        f"{s.eta}.")
  gi = tuple(s.guidance_interval)
  if gi and (len(gi) != 2 or np.isnan(gi).any() or gi[0] > gi[1]):
    err(f"sampling.guidance_interval must be () (guide everywhere) or (lambda_lo, lambda_hi) with "
        f"lambda_lo <= lambda_hi in log-SNR, got {gi}.")
  if not 0.0 <= s.rescale_phi <= 1.0:
    err(f"sampling.rescale_phi must be in [0, 1] (0 = off; Lin et al. use 0.7), got "
        f"{s.rescale_phi}.")
  if s.thresholding not in ("none", "static", "dynamic"):
    err(f"sampling.thresholding must be 'none', 'static' or 'dynamic', got {s.thresholding!r}.")
  if not 0.0 < s.dynamic_threshold_p <= 1.0:
    err(f"sampling.dynamic_threshold_p must be in (0, 1] (Imagen: 0.995), got "
        f"{s.dynamic_threshold_p}.")

  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
