"""The diffusion model's train state and optimizer: what a checkpoint of `--mode=train` holds.

Training (`train.py`) creates and updates it; sampling and evaluation build its abstract shape
(`abstract_state`) to restore the EMA or raw params alone from a checkpoint, without importing
the training code.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfg_jax import models
from cfg_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # consecutive skipped (non-finite) steps up to now


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to the learning rate, then constant (as in ADM)."""
  t = config.training
  if t.warmup_steps <= 0:
    return optax.constant_schedule(t.learning_rate)
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps),
      optax.constant_schedule(t.learning_rate),
    ],
    [t.warmup_steps],
  )


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
    raise ValueError(
      f"expected one learning-rate schedule in the optimizer state, found {len(counts)}."
    )
  return counts[0]


def init_state(
  rng: jax.Array, *, model: models.UNet, tx: optax.GradientTransformation, shape: tuple[int, ...]
) -> TrainState:
  w = (jnp.zeros((1,)),) if model.w_embedding else ()  # a distilled student takes w
  params = model.init(
    {"params": rng},
    jnp.zeros((1, *shape)),
    jnp.zeros((1,)),
    jnp.zeros((1,), jnp.int32),
    *w,
    train=False,
  )["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=params,
    opt_state=tx.init(params),
    nonfinite_streak=jnp.zeros((), jnp.int32),
  )


def abstract_state(config: ml_collections.ConfigDict, mesh) -> TrainState:
  """The train state of `config` as ShapeDtypeStructs in its training shardings on `mesh`
  (sharded over `fsdp` per config.mesh); nothing is allocated."""
  model, tx = models.create_model(config), create_optimizer(config)
  shape = models.image_shape(config)
  abstract = jax.eval_shape(
    lambda r: init_state(r, model=model, tx=tx, shape=shape), jax.random.key(0)
  )
  shardings = sharding_lib.state_shardings(abstract, mesh, sharding_lib.mesh_config(config)[1])
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
