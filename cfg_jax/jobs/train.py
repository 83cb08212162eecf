"""`--mode=train`: Algorithm 1 in the one training loop (`train_loop.run`), with sample grids for
`guidance.w_values` and, on the embedded digits, the SVM class-accuracy check at the end."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from cfg_jax import (
  checkpointing,
  models,
  sampling,
  sampling_runner,
  train_loop,
  train_state,
  training,
  validation,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import sources
from cfg_jax.evaluation import digits_judge


def judge_digits(*, writer, step: int, sampler, params, config, mesh) -> dict[float, float]:
  """Class accuracy of guided samples per w, judged by an SVM on pixels (embedded digits only)."""
  n = config.evaluation.judge_num_samples
  labels = np.resize(np.arange(config.data.num_classes, dtype=np.int32), n)
  acc = {}
  ws = config.evaluation.judge_w_values
  per_w = sampling_runner.samples_per_w(sampler, params, config, mesh, labels, ws, salt=1_000_033)
  for w, x in per_w:
    acc[w] = digits_judge.class_accuracy(
      x, labels, data_dir=config.data.data_dir, name=config.data.name
    )
    logging.info("step %d: SVM class accuracy of %d samples at w=%g: %.3f", step, n, w, acc[w])
  writer.write_scalars(step, {f"eval/svm_class_accuracy/w={w:g}": a for w, a in acc.items()})
  return acc


def run(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains per `config`, resuming from the latest checkpoint in `workdir`; returns the state."""
  validation.validate(config)
  mesh = sharding_lib.make_mesh_from_config(config)
  spec = sources.check_available(config.data)  # clear error before anything is compiled

  os.makedirs(workdir, exist_ok=True)
  t = config.training
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, state_sharding = training.create_train_state(config, model, tx, mesh, spec.image_shape)
  sampler = sampling_runner.make_sampler(
    model.apply,
    shape=spec.image_shape,
    null_label=config.data.num_classes,
    mesh=mesh,
    config=sampling.SamplerConfig.from_config(config),
  )
  judge = config.data.name in digits_judge.DATASETS and config.evaluation.judge_num_samples > 0
  grids = dict(workdir=workdir, sampler=sampler, config=config, mesh=mesh)

  def periodic(step: int, state: train_state.TrainState, *, last: bool, writer) -> None:
    if train_loop.every(step, t.sample_every_steps, last=last):
      paths = sampling_runner.write_sample_grids(
        writer=writer, step=step, params=state.ema_params, **grids
      )
      if paths:
        logging.info(
          "Wrote sample grids for w = %s: %s",
          ", ".join(f"{w:g}" for w in paths),
          os.path.join(workdir, "samples", f"step_{step:08d}_w*.png"),
        )
    if last and judge:
      judge_digits(
        writer=writer, step=step, sampler=sampler, params=state.ema_params, config=config, mesh=mesh
      )

  state = train_loop.run(
    state,
    training.make_train_step(model, tx, config, mesh, state_sharding),
    workdir=workdir,
    **train_loop.loop_inputs(config, num_steps=t.num_train_steps),
    mesh=mesh,
    rng=jax.random.fold_in(jax.random.key(config.seed), 1),
    hparams=config,
    metadata={"config": config.to_json()},
    periodic=periodic,
  )
  if int(state.step) >= t.num_train_steps:
    logging.info(
      "Done: trained to step %d. Sample grids in %s, checkpoints in %s, TensorBoard events in %s.",
      int(state.step),
      os.path.join(workdir, "samples"),
      checkpointing.checkpoint_dir(workdir),
      workdir,
    )
  return state
