"""The train steps: Algorithm 1 for the diffusion model, and the noisy classifier's step on noised
data; pure (state, batch, rng) → (state, metrics), jitted over the mesh with explicit shardings
and the state donated. `train_loop.run` runs them; the jobs `jobs/train.py`,
`jobs/train_classifier.py` and `jobs/distill.py` build them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfg_jax import diffusion, guidance, schedules, train_state
from cfg_jax import sharding as sharding_lib
from cfg_jax.train_state import ClassifierState, TrainState


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """0 at step 0 (EMA starts as a copy), then min(decay, (1 + step) / (10 + step))."""
  step = step.astype(jnp.float32)
  return jnp.where(step == 0, 0.0, jnp.minimum(decay, (1.0 + step) / (10.0 + step)))


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model,
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
  non-finite skip of `train_step` (shared by the distillation steps of `distillation.py`)."""
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
  model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh, state_sharding
):
  """`train_step` jitted over `mesh`: batch split over all devices, state donated and sharded as
  `state_sharding` (from `create_train_state`)."""
  return sharding_lib.jit_train_step(
    functools.partial(train_step, model=model, tx=tx, config=config), mesh, state_sharding
  )


def create_train_state(
  config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation, mesh, shape
) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (shapes from jax.eval_shape first):
  replicated, or sharded over the mesh's `fsdp` axis per config.mesh (sharding.state_shardings)."""
  init = functools.partial(train_state.init_state, model=model, tx=tx, shape=tuple(shape))
  return train_state.init_sharded(init, jax.random.key(config.seed), mesh=mesh, config=config)


# --- the noisy classifier of classifier guidance -------------------------------------------


def noised_inputs(
  rng: jax.Array, x: jax.Array, *, logsnr_min: float, logsnr_max: float
) -> tuple[jax.Array, jax.Array]:
  """(z_λ, λ): u ~ U[0, 1], λ = λ(u) (cosine schedule), z = α x + σ ε with ε ~ N(0, I)."""
  k_u, k_eps = jax.random.split(rng)
  u = jax.random.uniform(k_u, (x.shape[0],))
  logsnr = schedules.logsnr_schedule_cosine(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  z = diffusion.diffuse(x=x, eps=jax.random.normal(k_eps, x.shape), logsnr=logsnr)
  return z, logsnr


def cross_entropy(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example −log softmax(logits)[label], [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def classifier_step(
  state: ClassifierState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[ClassifierState, dict[str, jax.Array]]:
  """One step on noised data: z = α_λ x + σ_λ ε at λ(u), u ~ U[0, 1]; cross-entropy on the label."""
  x, labels = batch["image"], batch["label"]
  k_noise, k_dropout = jax.random.split(jax.random.fold_in(rng, state.step))
  z, logsnr = noised_inputs(
    k_noise, x, logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max
  )

  def loss_fn(params):
    logits = model.apply({"params": params}, z, logsnr, train=True, rngs={"dropout": k_dropout})
    return jnp.mean(cross_entropy(logits=logits, labels=labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": loss,
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    "grad_norm": optax.tree.norm(grads),
  }
  return ClassifierState(params=params, opt_state=opt_state, step=state.step + 1), metrics


def make_classifier_step(
  model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh, state_sharding
):
  """`classifier_step` jitted over `mesh`: batch split over `data`, state donated and replicated."""
  return sharding_lib.jit_train_step(
    functools.partial(classifier_step, model=model, tx=tx, config=config), mesh, state_sharding
  )


def create_classifier_state(
  config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation, mesh, shape
) -> tuple[ClassifierState, Any]:
  """Initialises the state from fold_in(key(seed), 0xC1A5) directly into its shardings (the
  diffusion model's params come from key(seed) itself)."""
  init = functools.partial(
    train_state.init_classifier_state, model=model, tx=tx, shape=tuple(shape)
  )
  return train_state.init_sharded(
    init, jax.random.fold_in(jax.random.key(config.seed), 0xC1A5), mesh=mesh, config=config
  )
