"""Training (Algorithm 1 of the paper) with a jitted, explicitly sharded train step.

`train_step` is pure: (state, batch, rng) → (state, metrics). `train_and_evaluate` runs it in the
loop of `train_loop.py` (data pipeline, TensorBoard, orbax checkpoints, preemption) and adds
periodic sample grids and, at the end, the digits judge. The state and optimizer live in
`train_state.py`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from cfg_jax import (
  checkpointing,
  config_lib,
  diffusion,
  guidance,
  images,
  models,
  sampling,
  sampling_runner,
  schedules,
  train_loop,
  train_state,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.evaluation import digits_judge
from cfg_jax.models import UNet
from cfg_jax.train_state import TrainState


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """0 at step 0 (EMA starts as a copy), then min(decay, (1 + step) / (10 + step))."""
  step = step.astype(jnp.float32)
  return jnp.where(step == 0, 0.0, jnp.minimum(decay, (1.0 + step) / (10.0 + step)))


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model: UNet,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of Algorithm 1: c ← ∅ w.p. p_uncond, u ~ U[0,1], λ = λ(u), loss ‖ε_θ(z_λ, c) − ε‖².

  Non-finite loss or gradients skip the update (params, optimizer state and EMA unchanged) and
  are counted in metrics['nonfinite']; a skipped step does not advance the learning-rate
  schedule, and metrics['learning_rate'] is the rate of the optimizer's count, not of state.step.
  """
  x, labels = batch["image"], batch["label"]
  rng = jax.random.fold_in(rng, state.step)
  k_drop, k_u, k_eps, k_dropout = jax.random.split(rng, 4)
  labels = guidance.drop_labels(
    k_drop, labels, p_uncond=config.guidance.p_uncond, null_label=config.data.num_classes
  )
  u = jax.random.uniform(k_u, (x.shape[0],))
  logsnr = schedules.logsnr_schedule_cosine(
    u, logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max
  )
  eps = jax.random.normal(k_eps, x.shape)
  z = diffusion.diffuse(x=x, eps=eps, logsnr=logsnr)

  def loss_fn(params):
    eps_pred = model.apply(
      {"params": params}, z, logsnr, labels, train=True, rngs={"dropout": k_dropout}
    )
    return jnp.mean(diffusion.eps_loss(eps_pred=eps_pred.astype(jnp.float32), eps=eps))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return apply_gradients(state, loss=loss, grads=grads, tx=tx, config=config)


def apply_gradients(
  state: TrainState,
  *,
  loss: jax.Array,
  grads: Any,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The update of a step with `loss` and `grads` of state.params: optimizer, EMA and the
  non-finite skip of `train_step` (shared by the distillation steps of `distill.py`)."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  decay = ema_decay_at(state.step, config.training.ema_decay)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  ema = keep(ema, state.ema_params)
  # The rate this step's update is scaled by: the schedule at the optimizer's own count.
  lr = train_state.learning_rate_schedule(config)(train_state.schedule_count(state.opt_state))
  metrics = {
    "loss": loss,
    "grad_norm": grad_norm,
    "nonfinite": 1.0 - finite.astype(jnp.float32),
    "learning_rate": lr,
  }
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  new_state = TrainState(
    step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, nonfinite_streak=streak
  )
  return new_state, metrics


def make_train_step(
  model: UNet,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  mesh,
  state_sharding,
):
  """`train_step` jitted over `mesh`: batch split over all devices, state donated and sharded as
  `state_sharding` (from `create_train_state`)."""
  return sharding_lib.jit_train_step(
    functools.partial(train_step, model=model, tx=tx, config=config), mesh, state_sharding
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: UNet, tx: optax.GradientTransformation, mesh, shape
) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (shapes from jax.eval_shape first):
  replicated, or sharded over the mesh's `fsdp` axis per config.mesh (sharding.state_shardings)."""
  init = functools.partial(train_state.init_state, model=model, tx=tx, shape=tuple(shape))
  return train_loop.init_sharded(init, jax.random.key(config.seed), mesh=mesh, config=config)


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """Labels of a grid with one row per class (at most 10 classes shown)."""
  classes = np.arange(min(num_classes, 10))
  return np.repeat(classes, per_class).astype(np.int32)


def samples_per_w(sampler, params, config, mesh, labels: np.ndarray, w_values, *, salt: int):
  """(w, samples of `labels` at w) for each w, from the same noise (seed and `salt`)."""
  rng = jax.random.fold_in(jax.random.key(config.seed), salt)
  generate = functools.partial(
    sampling_runner.generate, labels=labels, batch_size=config.sampling.batch_size, mesh=mesh
  )
  for w in w_values:
    yield float(w), generate(sampler, params, rng, w=float(w))


def write_sample_grids(
  *, writer, workdir: str, step: int, sampler, params, config, mesh
) -> dict[float, str]:
  """Samples a class-per-row grid for each w in guidance.w_values; writes PNGs and TB images."""
  per_class = config.training.grid_samples_per_class
  labels = grid_labels(config.data.num_classes, per_class)
  paths, tb_images = {}, {}
  ws = config.guidance.w_values
  for w, x in samples_per_w(sampler, params, config, mesh, labels, ws, salt=1_000_003):
    grid = images.make_grid(x, ncols=per_class)
    if jax.process_index() == 0:
      path = os.path.join(workdir, "samples", f"step_{step:08d}_w{w:g}.png")
      images.save_png(grid, path)
      paths[float(w)] = path
    tb_images[f"samples/w={w:g}"] = grid[None]
  writer.write_images(step, tb_images)
  return paths


def judge_digits(*, writer, step: int, sampler, params, config, mesh) -> dict[float, float]:
  """Class accuracy of guided samples per w, judged by an SVM on pixels (embedded digits only)."""
  n = config.evaluation.judge_num_samples
  labels = np.resize(np.arange(config.data.num_classes, dtype=np.int32), n)
  acc = {}
  ws = config.evaluation.judge_w_values
  for w, x in samples_per_w(sampler, params, config, mesh, labels, ws, salt=1_000_033):
    acc[float(w)] = digits_judge.class_accuracy(
      x, labels, data_dir=config.data.data_dir, name=config.data.name
    )
    logging.info(
      "step %d: SVM class accuracy of %d samples at w=%g: %.3f", step, n, w, acc[float(w)]
    )
  writer.write_scalars(step, {f"eval/svm_class_accuracy/w={w:g}": a for w, a in acc.items()})
  return acc


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config`, resuming from the latest checkpoint in `workdir`; returns the state."""
  from cfg_jax import data  # lazily: TF import

  config_lib.validate(config)
  mesh = sharding_lib.make_mesh_from_config(config)
  spec = data.check_available(config.data)  # clear error before anything is compiled

  os.makedirs(workdir, exist_ok=True)
  t = config.training
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, state_sharding = create_train_state(config, model, tx, mesh, spec.image_shape)
  sampler = sampling_runner.make_sampler(
    model.apply,
    shape=spec.image_shape,
    null_label=config.data.num_classes,
    mesh=mesh,
    config=sampling.SamplerConfig.from_config(config),
  )
  judge = config.data.name in digits_judge.DATASETS and config.evaluation.judge_num_samples > 0

  def periodic(step: int, state: TrainState, *, last: bool, writer) -> None:
    if train_loop.every(step, t.sample_every_steps, last=last):
      paths = write_sample_grids(
        writer=writer,
        workdir=workdir,
        step=step,
        sampler=sampler,
        params=state.ema_params,
        config=config,
        mesh=mesh,
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
    make_train_step(model, tx, config, mesh, state_sharding),
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
