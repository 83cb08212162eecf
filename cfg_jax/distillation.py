"""Guided distillation (Meng et al. 2023) and progressive distillation (Salimans & Ho 2022): the
pure train steps of each phase and the targets they regress on.

Stage 1 trains a w-conditioned student (the teacher's params plus a zero-initialised w embedding)
to give the teacher's guided ε̃ = (1 + w) ε(z, c) − w ε(z, ∅) in one forward, with
w ~ U[w_min, w_max] and λ as in training. Round k of stage 2 trains a student whose one DDIM
(η = 0) step matches two DDIM steps of the previous student. `jobs/distill.py` runs the phases;
the math and the choices are in docs/distillation.md.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfg_jax import diffusion, guidance, sampling, schedules, train_state, training
from cfg_jax import sharding as sharding_lib
from cfg_jax.train_state import TrainState


def optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with training.learning_rate = distill.learning_rate: the optimizer of a phase."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.training.learning_rate = config.distill.learning_rate
  return c


def draw_w(rng: jax.Array, n: int, *, w_min: float, w_max: float) -> jax.Array:
  """w ~ U[w_min, w_max], one per example."""
  return jax.random.uniform(rng, (n,), minval=w_min, maxval=w_max)


def ddim_target_x(
  *, z: jax.Array, z_next: jax.Array, logsnr: jax.Array, logsnr_next: jax.Array
) -> jax.Array:
  """The x̃ whose one DDIM (η = 0) step from z at λ lands on z_next at λ'' (Salimans & Ho,
  Algorithm 2): z'' = (σ''/σ) z + (α'' − (σ''/σ) α) x̃, solved for x̃. λ, λ'' [B] or scalars."""
  lam, lam_next = diffusion.broadcast_logsnr(logsnr, z), diffusion.broadcast_logsnr(logsnr_next, z)
  ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(-lam_next) - jax.nn.log_sigmoid(-lam)))  # σ''/σ
  alpha, _ = schedules.alpha_sigma(lam)
  alpha_next, _ = schedules.alpha_sigma(lam_next)
  return (z_next - ratio * z) / (alpha_next - ratio * alpha)


def two_step_target(
  eps_fn: guidance.EpsFn,
  *,
  z: jax.Array,
  logsnrs: tuple[jax.Array, jax.Array, jax.Array],
  labels: jax.Array,
  w: jax.Array,
  null_label: int,
  config: sampling.SamplerConfig,
) -> jax.Array:
  """x̃ target of a progressive round: two DDIM (η = 0) steps λ → λ' → λ'' of the sampler
  `config` with `eps_fn` (as `sampling.sample` takes them), then `ddim_target_x`. λs are [B];
  the two steps are one lax.scan, so the network is traced (and compiled) once."""
  lam, lam_mid, lam_next = logsnrs

  def move(zt, pair):
    a, b = pair
    x, eps = sampling.denoise(
      eps_fn, z=zt, logsnr=a, labels=labels, w=w, null_label=null_label, config=config
    )
    bcast = functools.partial(diffusion.broadcast_logsnr, like=zt)
    return sampling.ddim_step(x=x, eps=eps, logsnr=bcast(a), logsnr_next=bcast(b), eta=0.0), None

  pairs = (jnp.stack([lam, lam_mid]), jnp.stack([lam_mid, lam_next]))
  z_next, _ = jax.lax.scan(move, z, pairs)
  return ddim_target_x(z=z, z_next=z_next, logsnr=lam, logsnr_next=lam_next)


def _noised(x: jax.Array, rng: jax.Array, logsnr: jax.Array) -> jax.Array:
  return diffusion.diffuse(x=x, eps=jax.random.normal(rng, x.shape), logsnr=logsnr)


def _student_update(state, *, model, z, logsnr, labels, w, eps_target, rng, tx, config):
  """Gradient step on ‖ε_student(z, λ, c, w) − ε_target‖² (`training.apply_gradients`)."""

  def loss_fn(params):
    eps = model.apply({"params": params}, z, logsnr, labels, w, train=True, rngs={"dropout": rng})
    return jnp.mean(diffusion.eps_loss(eps_pred=eps.astype(jnp.float32), eps=eps_target))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return training.apply_gradients(state, loss=loss, grads=grads, tx=tx, config=config)


def stage1_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  teacher_params: Any,
  *,
  model,
  teacher,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One stage-1 step: λ as in training, w ~ U[w_min, w_max], target ε̃^w of the teacher from ONE
  forward on [z, z] with labels [c, ∅]; loss ‖ε_student(z, c, w) − ε̃^w‖² (= e^λ ‖x̂ − x̃^w‖²)."""
  x, labels = batch["image"], batch["label"]
  b, d = x.shape[0], config.distill
  k_u, k_eps, k_w, k_drop = jax.random.split(jax.random.fold_in(rng, state.step), 4)
  logsnr = schedules.logsnr_schedule_cosine(
    jax.random.uniform(k_u, (b,)),
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
  )
  z = _noised(x, k_eps, logsnr)
  w = draw_w(k_w, b, w_min=d.w_min, w_max=d.w_max)
  teacher_fn = sampling.unet_eps_fn(teacher.apply, teacher_params)
  step = guidance.Step(z=z, logsnr=logsnr, labels=labels, w=w, null_label=config.data.num_classes)
  pred, _ = guidance.CFG.guided(lambda *a: teacher_fn(*a).astype(jnp.float32), {}, step, ())
  target = pred.eps
  return _student_update(
    state,
    model=model,
    z=z,
    logsnr=logsnr,
    labels=labels,
    w=w,
    eps_target=jax.lax.stop_gradient(target),
    rng=k_drop,
    tx=tx,
    config=config,
  )


def round_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  frozen: dict[str, Any],
  *,
  model,
  teacher_sampler: sampling.SamplerConfig,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of a progressive round whose student takes K = frozen['num_moves'] DDIM moves:
  u = i/K with i ~ U{1..K}, z from the data at λ(u), w ~ U[w_min, w_max]; the teacher (the
  previous student, same U-Net, params frozen['teacher']) takes two DDIM steps
  u → u − 1/2K → u − 1/K; loss ‖ε_student − ε(x̃ target)‖². K is traced: every round runs the
  same compiled step."""
  x, labels = batch["image"], batch["label"]
  num_moves = frozen["num_moves"]
  b, d = x.shape[0], config.distill
  k_i, k_eps, k_w, k_drop = jax.random.split(jax.random.fold_in(rng, state.step), 4)
  u = jax.random.randint(k_i, (b,), 1, num_moves + 1) / num_moves.astype(jnp.float32)
  cosine = functools.partial(
    schedules.logsnr_schedule_cosine,
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
  )
  logsnrs = tuple(cosine(u - f / num_moves) for f in (0.0, 0.5, 1.0))
  z = _noised(x, k_eps, logsnrs[0])
  w = draw_w(k_w, b, w_min=d.w_min, w_max=d.w_max)
  x_target = two_step_target(
    sampling.unet_eps_fn(model.apply, frozen["teacher"]),
    z=z,
    logsnrs=logsnrs,
    labels=labels,
    w=w,
    null_label=config.data.num_classes,
    config=teacher_sampler,
  )
  target = diffusion.eps_from_x(z=z, x=x_target, logsnr=logsnrs[0])
  return _student_update(
    state,
    model=model,
    z=z,
    logsnr=logsnrs[0],
    labels=labels,
    w=w,
    eps_target=jax.lax.stop_gradient(target),
    rng=k_drop,
    tx=tx,
    config=config,
  )


def student_init(
  rng: jax.Array,
  params_from: Any,
  *,
  model,
  tx: optax.GradientTransformation,
  shape: tuple[int, ...],
) -> TrainState:
  """A fresh state of the student `model` whose params (and EMA) are `params_from`'s where it has
  them (all but the w embedding for a stage-1 student from the teacher)."""
  fresh = train_state.init_state(rng, model=model, tx=tx, shape=shape).params
  unknown = sorted(set(params_from) - set(fresh))
  if unknown:
    raise ValueError(f"the teacher has modules the student lacks: {unknown}.")
  params = {**fresh, **params_from}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=params,
    opt_state=tx.init(params),
    nonfinite_streak=jnp.zeros((), jnp.int32),
  )


def jit_distill_step(step_fn, mesh, state_sharding: Any, frozen: Any):
  """`sharding.jit_train_step` with `frozen` (the teacher params, ...: device arrays) as a fourth,
  non-donated input in their own shardings; returns f(state, batch, rng) for `train_loop.run`."""
  rep, dat = sharding_lib.replicated(mesh), sharding_lib.batch_sharded(mesh)
  jitted = jax.jit(
    step_fn,
    in_shardings=(state_sharding, dat, rep, jax.tree.map(lambda a: a.sharding, frozen)),
    out_shardings=(state_sharding, rep),
    donate_argnums=(0,),
  )
  return lambda state, batch, rng: jitted(state, batch, rng, frozen)
