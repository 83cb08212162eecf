"""Autoguidance (Karras et al. 2024): guide the conditional model with a weaker model of itself.

ε̃ = (1 + w) ε_θ(z, c) − w ε_guide(z, c) in the paper's w (w = 0: the conditional model), the guide
a conditional model of the same data that is smaller and/or trained for less (`config.autoguidance`:
its workdir, checkpoint step and config file). `sampling.sample` takes the guide as `guide_fn`, so
the guidance interval, CFG rescale, thresholding and every sampler apply as in classifier-free
guidance; each guided evaluation runs both networks on the batch B. The recipe and the measured
comparison are in docs/samplers.md and the README.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from cfg_jax import sampling, sampling_runner


def uses_autoguidance(config: ml_collections.ConfigDict) -> bool:
  """Whether the evaluation sweep or --mode=sample guide with `config.autoguidance`."""
  return "auto" in (config.evaluation.guidance, config.sampling.guidance)


def guide_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The guide's config: the file `autoguidance.config` ('path' or 'path:arg') with its dataset
  fields filled in, or `config` itself when that is ''."""
  from cfg_jax import config_lib

  spec = config.autoguidance.config
  if not spec:
    return config
  path, sep, arg = spec.partition(".py:")
  return config_lib.load_config(path + ".py" if sep else path, arg if sep else None)


def guide_errors(config: ml_collections.ConfigDict) -> list[str]:
  """What keeps the guide of `config.autoguidance` from loading, each naming its field and fix:
  no workdir or checkpoint, a config that does not load, or a model of other data (image shape,
  number of classes). Reads checkpoint directories and builds nothing."""
  from cfg_jax import checkpointing

  ag = config.autoguidance
  if not ag.workdir:
    return [
      "autoguidance.workdir is empty: give the guide's workdir (a conditional model of the same "
      "data trained with --mode=train, e.g. configs/digits_guide.py, or the main workdir with an "
      "earlier autoguidance.checkpoint_step)."
    ]
  errors = []
  try:
    guide = guide_config(config)
  except (OSError, ValueError, KeyError) as e:
    guide = None
    errors.append(f"autoguidance.config={ag.config!r} does not load: {e}")
  if guide is not None:
    d, g = config.data, guide.data
    for key in ("name", "image_size", "num_classes"):
      if d[key] != g[key]:
        errors.append(
          f"autoguidance.config gives data.{key}={g[key]!r} but the main model has "
          f"{d[key]!r}: the guide must model the same data (same images and classes)."
        )
  ckpt_dir = checkpointing.checkpoint_dir(ag.workdir)
  steps = []
  if os.path.isdir(ckpt_dir):
    steps = checkpointing.Checkpointer(ag.workdir, read_only=True).all_steps()
  if not steps:
    errors.append(
      f"autoguidance.workdir={ag.workdir!r} holds no checkpoint (looked in {ckpt_dir}): train "
      "the guide there first with --mode=train."
    )
  elif ag.checkpoint_step >= 0 and ag.checkpoint_step not in steps:
    errors.append(
      f"autoguidance.checkpoint_step={ag.checkpoint_step} is not in {ag.workdir!r}, which holds "
      f"steps {sorted(steps)}; pick one of them or -1 (the latest)."
    )
  return errors


def load_guide(
  config: ml_collections.ConfigDict, mesh: Mesh | None
) -> tuple[Callable[..., jax.Array], Any, int]:
  """(apply, EMA params, step) of the guide of `config.autoguidance`, params replicated."""
  from cfg_jax import models, sample

  ag, guide = config.autoguidance, guide_config(config)
  step = None if ag.checkpoint_step < 0 else ag.checkpoint_step
  params, step = sample.load_params(guide, ag.workdir, mesh, step=step, use_ema=True)
  return models.create_model(guide).apply, params, int(step)


def make_autoguided_sampler(
  apply_fn: Callable[..., jax.Array],
  guide_apply_fn: Callable[..., jax.Array],
  *,
  shape: tuple[int, ...],
  null_label: int,
  config: sampling.SamplerConfig,
  mesh: Mesh | None = None,
):
  """Returns jitted f(params, guide_params, rng, sample_ids, labels, w) -> x.

  `sampling_runner.make_sampler`'s sampler with ε(z, ∅) replaced by the guide's ε(z, c); w is
  traced per sample (a sweep compiles once). `sampling_runner.bind_second_params` gives it the
  signature of `sampling_runner.generate`. `config.guided` must be True (False would ignore the
  guide: that is the plain conditional sampler).
  """
  if not config.guided:
    raise ValueError(
      "autoguidance needs SamplerConfig(guided=True): guided=False samples the conditional "
      "model alone and never calls the guide."
    )

  def f(params, guide_params, rng, sample_ids, labels, w):
    return sampling.sample(
      sampling.unet_eps_fn(apply_fn, params),
      guide_fn=sampling.unet_eps_fn(guide_apply_fn, guide_params),
      rng=rng,
      sample_ids=sample_ids,
      labels=labels,
      w=w,
      shape=tuple(shape),
      null_label=null_label,
      config=config,
    )

  return sampling_runner.jit_on_mesh(f, mesh=mesh, num_replicated=3)


def describe(config: ml_collections.ConfigDict, *, step: int | None = None) -> dict[str, Any]:
  """JSON-serialisable guide settings for results files (`step`: the resolved checkpoint)."""
  ag = config.autoguidance
  return {
    "workdir": ag.workdir,
    "checkpoint_step": ag.checkpoint_step if step is None else int(step),
    "config": ag.config or "<main config>",
  }
