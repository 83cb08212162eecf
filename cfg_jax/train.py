"""Training (Algorithm 1 of the paper) with a jitted, explicitly sharded train step.

`train_step` is pure: (state, batch, rng) → (state, metrics). `train_and_evaluate` wires it to the
data pipeline, clu metric writers (TensorBoard), orbax checkpoints and periodic sample grids.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from cfg_jax import checkpointing, config_lib, diffusion, guidance, images, preemption, sampling
from cfg_jax import sampling_runner, schedules
from cfg_jax import sharding as sharding_lib
from cfg_jax.evaluation import digits_judge
from cfg_jax.models import UNet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # consecutive skipped (non-finite) steps up to now


class NonFiniteLossError(FloatingPointError):
  """Too many consecutive steps had a non-finite loss or gradient."""


def create_model(config: ml_collections.ConfigDict) -> UNet:
  m = config.model
  return UNet(num_classes=config.data.num_classes, ch=m.ch, ch_mult=tuple(m.ch_mult),
              num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
              head_channels=m.head_channels, num_heads=m.num_heads, dropout=m.dropout,
              resblock_updown=m.resblock_updown, num_groups=m.num_groups,
              logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max,
              dtype=jnp.dtype(m.dtype), remat=m.remat)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  from cfg_jax import data  # imported lazily: TF is heavy and only needed here
  return tuple(data.dataset_spec(config.data).image_shape)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to the learning rate, then constant (as in ADM)."""
  t = config.training
  if t.warmup_steps <= 0:
    return optax.constant_schedule(t.learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps),
       optax.constant_schedule(t.learning_rate)], [t.warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = config.training
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  parts.append(optax.adam(learning_rate_schedule(config), b1=t.adam_b1, b2=t.adam_b2))
  return optax.chain(*parts)


def schedule_count(opt_state: Any) -> jax.Array:
  """The count the learning-rate schedule of `create_optimizer` reads in `opt_state`: the number
  of updates applied, which skipped (non-finite) steps do not advance, unlike TrainState.step."""
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [x.count for x in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(x)]
  if len(counts) != 1:
    raise ValueError(f"expected one learning-rate schedule in the optimizer state, found "
                     f"{len(counts)}.")
  return counts[0]


def init_state(rng: jax.Array, *, model: UNet, tx: optax.GradientTransformation,
               shape: tuple[int, ...]) -> TrainState:
  params = model.init({"params": rng}, jnp.zeros((1, *shape)), jnp.zeros((1,)),
                      jnp.zeros((1,), jnp.int32), train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), nonfinite_streak=jnp.zeros((), jnp.int32))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """0 at step 0 (EMA starts as a copy), then min(decay, (1 + step) / (10 + step))."""
  step = step.astype(jnp.float32)
  return jnp.where(step == 0, 0.0, jnp.minimum(decay, (1.0 + step) / (10.0 + step)))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, model: UNet,
               tx: optax.GradientTransformation, config: ml_collections.ConfigDict
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of Algorithm 1: c ← ∅ w.p. p_uncond, u ~ U[0,1], λ = λ(u), loss ‖ε_θ(z_λ, c) − ε‖².

  Non-finite loss or gradients skip the update (params, optimizer state and EMA unchanged) and
  are counted in metrics['nonfinite']; a skipped step does not advance the learning-rate
  schedule, and metrics['learning_rate'] is the rate of the optimizer's count, not of state.step.
  """
  x, labels = batch["image"], batch["label"]
  rng = jax.random.fold_in(rng, state.step)
  k_drop, k_u, k_eps, k_dropout = jax.random.split(rng, 4)
  labels = guidance.drop_labels(k_drop, labels, p_uncond=config.guidance.p_uncond,
                                null_label=config.data.num_classes)
  u = jax.random.uniform(k_u, (x.shape[0],))
  logsnr = schedules.logsnr_schedule_cosine(u, logsnr_min=config.diffusion.logsnr_min,
                                            logsnr_max=config.diffusion.logsnr_max)
  eps = jax.random.normal(k_eps, x.shape)
  z = diffusion.diffuse(x=x, eps=eps, logsnr=logsnr)

  def loss_fn(params):
    eps_pred = model.apply({"params": params}, z, logsnr, labels, train=True,
                           rngs={"dropout": k_dropout})
    return jnp.mean(diffusion.eps_loss(eps_pred=eps_pred.astype(jnp.float32), eps=eps))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
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
  lr = learning_rate_schedule(config)(schedule_count(state.opt_state))
  metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite": 1.0 - finite.astype(jnp.float32),
             "learning_rate": lr}
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  new_state = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state,
                         nonfinite_streak=streak)
  return new_state, metrics


def make_train_step(model: UNet, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh, state_sharding):
  """`train_step` jitted over `mesh`: batch split over all devices, state donated and sharded as
  `state_sharding` (from `create_train_state`)."""
  return sharding_lib.jit_train_step(
      functools.partial(train_step, model=model, tx=tx, config=config), mesh, state_sharding)


def create_train_state(config: ml_collections.ConfigDict, model: UNet,
                       tx: optax.GradientTransformation, mesh, shape) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (shapes from jax.eval_shape first):
  replicated, or sharded over the mesh's `fsdp` axis per config.mesh (sharding.state_shardings)."""
  init = functools.partial(init_state, model=model, tx=tx, shape=tuple(shape))
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding_lib.state_shardings(abstract, mesh,
                                           sharding_lib.mesh_config(config)[1])
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """Labels of a grid with one row per class (at most 10 classes shown)."""
  classes = np.arange(min(num_classes, 10))
  return np.repeat(classes, per_class).astype(np.int32)


def write_sample_grids(*, writer, workdir: str, step: int, sampler, params, config,
                       mesh) -> dict[float, str]:
  """Samples a class-per-row grid for each w in guidance.w_values; writes PNGs and TB images."""
  per_class = config.training.grid_samples_per_class
  labels = grid_labels(config.data.num_classes, per_class)
  rng = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  paths, tb_images = {}, {}
  for w in config.guidance.w_values:
    x = sampling_runner.generate(sampler, params, rng, labels=labels, w=float(w),
                                 batch_size=config.sampling.batch_size, mesh=mesh)
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
  rng = jax.random.fold_in(jax.random.key(config.seed), 1_000_033)
  acc = {}
  for w in config.evaluation.judge_w_values:
    x = sampling_runner.generate(sampler, params, rng, labels=labels, w=float(w),
                                 batch_size=config.sampling.batch_size, mesh=mesh)
    acc[float(w)] = digits_judge.class_accuracy(x, labels, data_dir=config.data.data_dir,
                                                name=config.data.name)
    logging.info("step %d: SVM class accuracy of %d samples at w=%g: %.3f", step, n, w,
                 acc[float(w)])
  writer.write_scalars(step, {f"eval/svm_class_accuracy/w={w:g}": a for w, a in acc.items()})
  return acc


def check_nonfinite_streak(state: TrainState, config, ckpt) -> None:
  """Raises NonFiniteLossError after training.max_consecutive_nonfinite skipped steps in a row
  (checked at log steps; skipped steps never change the parameters, so nothing is lost)."""
  limit = config.training.max_consecutive_nonfinite
  streak = int(state.nonfinite_streak)
  if limit > 0 and streak >= limit:
    raise NonFiniteLossError(
        f"{streak} consecutive steps up to step {int(state.step)} had a non-finite loss or "
        f"gradient (limit training.max_consecutive_nonfinite={limit}); their updates were "
        f"skipped and the last good checkpoint (step {ckpt.latest_step()}) is kept. Lower "
        "training.learning_rate, enable training.grad_clip, or check the data.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config`, resuming from the latest checkpoint in `workdir`; returns the state."""
  from cfg_jax import data  # lazily: TF import

  config_lib.validate(config)
  mesh = sharding_lib.make_mesh_from_config(config)
  spec = data.check_available(config.data)  # clear error before anything is compiled

  os.makedirs(workdir, exist_ok=True)
  t = config.training
  model, tx = create_model(config), create_optimizer(config)
  state, state_sharding = create_train_state(config, model, tx, mesh, spec.image_shape)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=t.max_checkpoints_to_keep)
  state = ckpt.restore_or(state)
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.items()})
  step_fn = make_train_step(model, tx, config, mesh, state_sharding)
  sampler = sampling_runner.make_sampler(
      model.apply, shape=spec.image_shape, null_label=config.data.num_classes, mesh=mesh,
      config=sampling.SamplerConfig.from_config(config))
  train_iter = data.train_iterator(config.data, global_batch_size=t.batch_size, seed=config.seed,
                                   start_step=start_step, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  report = periodic_actions.ReportProgress(num_train_steps=t.num_train_steps, writer=writer,
                                           every_steps=t.log_every_steps or None)
  rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  pending: list[dict[str, jax.Array]] = []
  last_log_time, last_log_step = time.time(), start_step
  meta = {"config": config.to_json()}

  with metric_writers.ensure_flushes(writer), preemption.PreemptionWatcher() as watcher:
    for step in range(start_step + 1, t.num_train_steps + 1):
      batch = sharding_lib.global_batch(next(train_iter), mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, batch, rng)
      pending.append(metrics)
      report(step)
      last = step == t.num_train_steps
      if pending and (last or (t.log_every_steps and step % t.log_every_steps == 0)):
        summary = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(pending))
        summary["nonfinite"] *= len(pending)  # a count, not a rate
        now = time.time()
        summary["images_per_sec"] = (step - last_log_step) * t.batch_size / (now - last_log_time)
        last_log_time, last_log_step = now, step
        writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        pending = []
        check_nonfinite_streak(state, config, ckpt)
      if ckpt.save_or_stop(step, state, last=last, every=t.checkpoint_every_steps,
                           watcher=watcher, metadata=meta):
        logging.warning("Preempted: saved checkpoint step %d and stopped; run the same command "
                        "again to resume.", step)
        return state
      if last or (t.sample_every_steps and step % t.sample_every_steps == 0):
        paths = write_sample_grids(writer=writer, workdir=workdir, step=step, sampler=sampler,
                                   params=state.ema_params, config=config, mesh=mesh)
        for w, p in paths.items():
          logging.info("Wrote samples for w=%g to %s", w, p)
      if (last and config.data.name in digits_judge.DATASETS
          and config.evaluation.judge_num_samples > 0):
        judge_digits(writer=writer, step=step, sampler=sampler, params=state.ema_params,
                     config=config, mesh=mesh)
    ckpt.close()
  return state
