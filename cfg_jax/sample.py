"""`--mode=sample`: draw guided samples from a checkpoint's EMA params, write PNG grids and .npz
(classifier-free guidance, or autoguidance with `sampling.guidance=auto`)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from cfg_jax import (
  autoguidance,
  checkpointing,
  config_lib,
  images,
  models,
  sampling,
  sampling_runner,
  students,
  train_state,
)
from cfg_jax import sharding as sharding_lib


def sample_labels(config: ml_collections.ConfigDict) -> np.ndarray:
  """sampling.labels repeated to num_samples, or all classes cycled when it is empty."""
  n = config.sampling.num_samples
  base = np.asarray(config.sampling.labels or range(config.data.num_classes), np.int32)
  return np.resize(base, n).astype(np.int32)


def restore_params(
  config: ml_collections.ConfigDict,
  workdir: str,
  mesh,
  *,
  step: int | None = None,
  use_ema: bool = True,
  setting: str = "sampling.checkpoint_step",
):
  """(params, step): the EMA (or raw) params of checkpoint `step` alone, in their training
  shardings on `mesh`; step None: the newest intact checkpoint (a corrupt newer one is skipped
  with a warning that names `setting`, the field that picks a step). The optimizer state is never
  read, so whatever trained with fsdp restores with the same mesh.fsdp."""
  field = "ema_params" if use_ema else "params"
  abstract = train_state.abstract_state(config, mesh)
  with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:  # closed: no orbax thread left

    def read(s: int):
      return ckpt.restore_fields(s, abstract, (field,))[field]

    if step is not None:
      return read(step), step
    restored = ckpt.restore_newest(read, setting=setting)
    if restored is None:
      raise checkpointing.CheckpointError(
        f"no complete checkpoint in {ckpt.directory}: train first with --mode=train."
      )
  return restored


def load_params(
  config: ml_collections.ConfigDict,
  workdir: str,
  mesh,
  *,
  step: int | None = None,
  use_ema: bool = True,
  setting: str = "sampling.checkpoint_step",
):
  """(params, step) of `restore_params`, gathered to replicated: what the samplers take."""
  params, step = restore_params(config, workdir, mesh, step=step, use_ema=use_ema, setting=setting)
  return sharding_lib.gather_replicated(params), step


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Samples num_samples images for every w in sampling.w_values; returns the .npz path (named
  `auto_samples.npz`, grids `auto_w<w>.png`, with autoguidance; of the distilled student
  distill.student, when set, in its own directory)."""
  config_lib.validate(config)
  config, workdir = students.resolve(config, workdir)
  mesh = sharding_lib.make_mesh_from_config(config)
  s = config.sampling
  params, step = load_params(
    config,
    workdir,
    mesh,
    step=None if s.checkpoint_step < 0 else s.checkpoint_step,
    use_ema=s.use_ema,
  )
  sampler_config = sampling.SamplerConfig.from_config(config)
  kw = dict(
    shape=models.image_shape(config),
    null_label=config.data.num_classes,
    mesh=mesh,
    config=sampler_config,
  )
  apply_fn, settings, prefix = models.create_model(config).apply, sampler_config.describe(), ""
  if s.guidance == "auto":
    guide_apply, guide_params, guide_step = autoguidance.load_guide(config, mesh)
    sampler = sampling_runner.bind_second_params(
      autoguidance.make_autoguided_sampler(apply_fn, guide_apply, **kw), guide_params
    )
    settings["autoguidance"] = autoguidance.describe(config, step=guide_step)
    prefix = "auto_"
  else:
    sampler = sampling_runner.make_sampler(apply_fn, **kw)
  labels = sample_labels(config)
  rng = jax.random.fold_in(jax.random.key(config.seed), 2)
  out_dir = os.path.join(workdir, "sample", f"step_{step:08d}")
  results = []
  for w in s.w_values:
    x = sampling_runner.generate(
      sampler, params, rng, labels=labels, w=float(w), batch_size=s.batch_size, mesh=mesh
    )
    results.append(images.to_uint8(x))
    if jax.process_index() == 0:
      order = np.argsort(labels, kind="stable")  # one class after another in the grid
      ncols = int(np.ceil(np.sqrt(len(labels))))
      path = os.path.join(out_dir, f"{prefix}w{w:g}.png")
      images.save_png(images.make_grid(x[order], ncols=ncols), path)
      logging.info("step %d, w=%g: %d samples -> %s", step, w, len(labels), path)
  npz = os.path.join(out_dir, f"{prefix}samples.npz")
  if jax.process_index() == 0:
    np.savez_compressed(
      npz,
      images=np.stack(results),
      labels=labels,
      w_values=np.asarray(s.w_values, np.float32),
      step=step,
      num_steps=s.num_steps,
      v=s.v,
      sampler_settings=json.dumps(settings, sort_keys=True),
    )
    logging.info(
      "Done: %d samples per w for w = %s from checkpoint step %d: grids %s, arrays %s.",
      len(labels),
      ", ".join(f"{w:g}" for w in s.w_values),
      step,
      os.path.join(out_dir, "w*.png"),
      npz,
    )
  return npz
