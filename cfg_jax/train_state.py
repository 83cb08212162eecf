"""What a checkpoint holds: the train states of the diffusion model and of the noisy classifier,
their optimizers, their abstract shapes, and restoring the params alone from a checkpoint.

Training creates and updates the states (`training.py`); sampling, evaluation and the guidance
networks restore only the params they use (`restore_params`, `restore_classifier_params`), in the
shardings training gave them, without ever reading the optimizer state.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfg_jax import checkpointing, models
from cfg_jax import sharding as sharding_lib

CLASSIFIER_SUBDIR = "classifier"  # <workdir>/classifier: the classifier's events and checkpoints


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # consecutive skipped (non-finite) steps up to now


@flax.struct.dataclass
class ClassifierState:
  params: Any
  opt_state: Any
  step: jax.Array


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


def create_classifier_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam at the classifier's learning rate."""
  return optax.adam(config.classifier.learning_rate)


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
  rng: jax.Array, *, model, tx: optax.GradientTransformation, shape: tuple[int, ...]
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


def init_classifier_state(
  rng: jax.Array, *, model, tx: optax.GradientTransformation, shape: tuple[int, ...]
) -> ClassifierState:
  params = model.init({"params": rng}, jnp.zeros((1, *shape)), jnp.zeros((1,)), train=False)
  params = params["params"]
  return ClassifierState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def init_sharded(
  init: Callable[[jax.Array], Any], rng: jax.Array, *, mesh, config: ml_collections.ConfigDict
) -> tuple[Any, Any]:
  """(init(rng), its shardings), computed directly into the shardings (shapes from
  jax.eval_shape first): replicated, or sharded over the mesh's `fsdp` axis per config.mesh."""
  shardings = sharding_lib.state_shardings(
    jax.eval_shape(init, rng), mesh, sharding_lib.mesh_config(config)[1]
  )
  return jax.jit(init, out_shardings=shardings)(rng), shardings


def abstract_of(init: Callable[[jax.Array], Any], mesh, config: ml_collections.ConfigDict) -> Any:
  """init's state as ShapeDtypeStructs in the shardings of config.mesh on `mesh` (sharded over
  `fsdp` where the rule of sharding.state_shardings says so); nothing is allocated."""
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding_lib.state_shardings(abstract, mesh, sharding_lib.mesh_config(config)[1])
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def abstract_state(config: ml_collections.ConfigDict, mesh) -> TrainState:
  """The diffusion model's train state of `config` as ShapeDtypeStructs in its shardings."""
  model, tx = models.create_model(config), create_optimizer(config)
  init = functools.partial(init_state, model=model, tx=tx, shape=models.image_shape(config))
  return abstract_of(init, mesh, config)


def abstract_classifier_state(config: ml_collections.ConfigDict, mesh) -> ClassifierState:
  """The classifier's train state of `config` as ShapeDtypeStructs in its shardings."""
  model, tx = models.create_classifier(config), create_classifier_optimizer(config)
  init = functools.partial(
    init_classifier_state, model=model, tx=tx, shape=models.image_shape(config)
  )
  return abstract_of(init, mesh, config)


def check_checkpoint(workdir: str, *, step: int | None = None, setting: str) -> None:
  """CheckpointError unless `workdir` holds a checkpoint (step `step`, when given): cheap, for a
  job to say there is nothing to read before it computes or compiles anything."""
  steps = checkpointing.list_steps(workdir)
  if not steps:
    raise checkpointing.CheckpointError(
      f"no checkpoints in {checkpointing.checkpoint_dir(workdir)}: train first with --mode=train "
      "and the same --workdir."
    )
  if step is not None and step not in steps:
    raise checkpointing.CheckpointError(
      f"--config.{setting}={step} is not in {checkpointing.checkpoint_dir(workdir)}, which holds "
      f"steps {steps}; pick one of them or -1 (the latest)."
    )


def restore_params(
  config: ml_collections.ConfigDict,
  workdir: str,
  mesh,
  *,
  step: int | None = None,
  use_ema: bool = True,
  setting: str = "sampling.checkpoint_step",
  gather: bool = False,
) -> tuple[Any, int]:
  """(params, step): the EMA (or raw) params of the diffusion model's checkpoint `step` alone, in
  their training shardings on `mesh` (gather: replicated, what the samplers take); step None: the
  newest intact checkpoint (a corrupt newer one is skipped with a warning that names `setting`,
  the field that picks a step). The optimizer state is never read, so whatever trained with fsdp
  restores with the same mesh.fsdp."""
  field = "ema_params" if use_ema else "params"
  abstract = abstract_state(config, mesh)
  with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:

    def read(s: int):
      return ckpt.restore_fields(s, abstract, (field,))[field]

    if step is not None:
      params = read(step)
    else:
      restored = ckpt.restore_newest(read, setting=setting)
      if restored is None:
        raise checkpointing.CheckpointError(
          f"no complete checkpoint in {ckpt.directory}: train first with --mode=train."
        )
      params, step = restored
  return (sharding_lib.gather_replicated(params) if gather else params), step


def classifier_dir(workdir: str) -> str:
  return os.path.join(workdir, CLASSIFIER_SUBDIR)


def restore_classifier_params(
  config: ml_collections.ConfigDict, workdir: str, mesh, *, step: int | None = None
) -> tuple[Any, int]:
  """(params, step) of the classifier checkpoint `step` (None: the newest intact one, skipping a
  corrupt newer one with a warning) in `<workdir>/classifier`; CheckpointError when there is none
  (train it first)."""
  abstract = abstract_classifier_state(config, mesh)
  how = (
    "train one first with python -m cfg_jax.main --mode=train_classifier --config=... "
    f"--workdir={workdir}"
  )
  try:
    ckpt = checkpointing.Checkpointer(classifier_dir(workdir), max_to_keep=None, read_only=True)
  except checkpointing.CheckpointError as e:
    raise checkpointing.CheckpointError(
      f"no classifier checkpoint in {classifier_dir(workdir)}: {how}"
    ) from e
  with ckpt:
    if step is not None:
      return ckpt.restore(step, abstract).params, step
    restored = ckpt.restore_newest(lambda s: ckpt.restore(s, abstract).params)
  if restored is None:
    raise checkpointing.CheckpointError(
      f"no complete classifier checkpoint in {ckpt.directory}: {how}"
    )
  return restored
