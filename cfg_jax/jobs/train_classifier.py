"""`--mode=train_classifier`: the noise-conditional classifier p_φ(c | z_λ, λ) of classifier
guidance, trained on noised data at every λ of the schedule in the one training loop, with events
and checkpoints in `<workdir>/classifier` (exact resume), and its accuracy on noised test images
per λ bin at the end.

    python -m cfg_jax.main --mode=train_classifier --config=configs/digits.py --workdir=runs/digits \
        [--config.classifier.num_train_steps=2000 ...]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cfg_jax import (
  checkpointing,
  diffusion,
  models,
  schedules,
  train_loop,
  train_state,
  training,
  validation,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import pipeline, sources
from cfg_jax.train_state import ClassifierState

# λ bins of the noised-test accuracy report: [edges[i], edges[i + 1]).
ACCURACY_LOGSNR_EDGES = (-20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 20.0)


def noised_accuracy(
  apply_fn,
  params,
  *,
  images: np.ndarray,
  labels: np.ndarray,
  rng: jax.Array,
  logsnr_edges=ACCURACY_LOGSNR_EDGES,
  repeats: int = 4,
  logsnr_max: float = schedules.LOGSNR_MAX,
) -> dict[tuple[float, float], float]:
  """Accuracy on `images` noised at λ ~ U[lo, hi) for each bin [lo, hi) of `logsnr_edges`.

  Every image is noised `repeats` times per bin (λ and ε from `rng`). λ is clipped to
  `logsnr_max`. Returns {(lo, hi): accuracy}.
  """
  x = jnp.asarray(np.tile(images, (repeats,) + (1,) * (images.ndim - 1)), jnp.float32)
  y = jnp.asarray(np.tile(labels, repeats), jnp.int32)

  @jax.jit
  def correct(params, key, lo, hi):
    k_l, k_e = jax.random.split(key)
    logsnr = jnp.minimum(jax.random.uniform(k_l, y.shape, minval=lo, maxval=hi), logsnr_max)
    z = diffusion.diffuse(x=x, eps=jax.random.normal(k_e, x.shape), logsnr=logsnr)
    logits = apply_fn({"params": params}, z, logsnr, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == y)

  out = {}
  for i, (lo, hi) in enumerate(zip(logsnr_edges[:-1], logsnr_edges[1:])):
    out[(float(lo), float(hi))] = float(correct(params, jax.random.fold_in(rng, i), lo, hi))
  return out


def accuracy_tag(lo: float, hi: float) -> str:
  return f"eval/noised_test_accuracy/lambda={lo:g}..{hi:g}"


def run(config: ml_collections.ConfigDict, workdir: str) -> ClassifierState:
  """Trains the noise-conditional classifier; events and checkpoints in `<workdir>/classifier`.

  Resumes from the latest intact checkpoint there. At the last step it writes the accuracy on
  noised test images per λ bin (`noised_accuracy`) to TensorBoard and the log. Returns the state.
  """
  validation.validate(config, classifier=True)
  mesh = sharding_lib.make_mesh_from_config(config)
  spec = sources.check_available(config.data)
  cc = config.classifier
  cdir = train_state.classifier_dir(workdir)
  os.makedirs(cdir, exist_ok=True)
  model = models.create_classifier(config)
  tx = train_state.create_classifier_optimizer(config)
  state, state_sharding = training.create_classifier_state(
    config, model, tx, mesh, spec.image_shape
  )

  def periodic(step: int, state: ClassifierState, *, last: bool, writer) -> None:
    if not last:
      return
    images, labels = pipeline.eval_arrays(config.data)
    acc = noised_accuracy(
      model.apply,
      state.params,
      images=images,
      labels=labels,
      rng=jax.random.fold_in(jax.random.key(config.seed), 0xC1A5 + 2),
      logsnr_max=config.diffusion.logsnr_max,
    )
    writer.write_scalars(step, {accuracy_tag(*k): v for k, v in acc.items()})
    logging.info(
      "Classifier step %d, accuracy on noised %s images per λ bin: %s",
      step,
      spec.eval_split,
      ", ".join(f"[{lo:g},{hi:g}): {a:.3f}" for (lo, hi), a in acc.items()),
    )

  state = train_loop.run(
    state,
    training.make_classifier_step(model, tx, config, mesh, state_sharding),
    workdir=cdir,
    **train_loop.loop_inputs(config, num_steps=cc.num_train_steps, section="classifier"),
    mesh=mesh,
    rng=jax.random.fold_in(jax.random.key(config.seed), 0xC1A5 + 1),
    hparams=cc,
    metadata={"config": config.to_json(), "classifier": cc.to_json()},
    periodic=periodic,
    what="Classifier",
  )
  if int(state.step) >= cc.num_train_steps:
    logging.info(
      "Done: classifier trained to step %d. Checkpoints in %s, TensorBoard events in %s.",
      int(state.step),
      checkpointing.checkpoint_dir(cdir),
      cdir,
    )
  return state
