"""`--mode=sample`: draw guided samples from a checkpoint's EMA params with the method of
`sampling.guidance` (classifier-free by default), and write PNG grids and a .npz per run."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from cfg_jax import (
  guidance,
  images,
  models,
  networks,
  sampling,
  sampling_runner,
  students,
  train_state,
  validation,
)
from cfg_jax import sharding as sharding_lib


def sample_labels(config: ml_collections.ConfigDict) -> np.ndarray:
  """sampling.labels repeated to num_samples, or all classes cycled when it is empty."""
  n = config.sampling.num_samples
  base = np.asarray(config.sampling.labels or range(config.data.num_classes), np.int32)
  return np.resize(base, n).astype(np.int32)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Samples num_samples images for every w in sampling.w_values; returns the .npz path (named
  `<prefix>samples.npz`, grids `<prefix>w<w>.png`, where the method has a file prefix, e.g.
  `auto_` for autoguidance; of the distilled student distill.student, when set, in its own
  directory)."""
  validation.validate(config, workdir=workdir)
  config, workdir = students.resolve(config, workdir)
  mesh = sharding_lib.make_mesh_from_config(config)
  s = config.sampling
  method = guidance.from_config(config, section="sampling")
  params, step = train_state.restore_params(
    config,
    workdir,
    mesh,
    step=None if s.checkpoint_step < 0 else s.checkpoint_step,
    use_ema=s.use_ema,
    gather=True,
  )
  nets, net_steps = networks.load(config, method, workdir=workdir, mesh=mesh)
  sampler_config = sampling.SamplerConfig.from_config(config)
  sampler = sampling_runner.make_sampler(
    models.create_model(config).apply,
    shape=models.image_shape(config),
    null_label=config.data.num_classes,
    mesh=mesh,
    config=sampler_config,
    method=method,
    networks=nets,
  )
  settings = {**sampler_config.describe(), **networks.describe(config, method, net_steps)}
  prefix = method.file_prefix
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
      os.path.join(out_dir, f"{prefix}w*.png"),
      npz,
    )
  return npz
