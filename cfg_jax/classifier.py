"""The noise-conditional classifier p_φ(c | z_λ, λ) of classifier guidance (Dhariwal & Nichol 2021).

Classifier guidance is the baseline that classifier-free guidance (Ho & Salimans 2022) replaces: a
separate classifier, trained on noised data z_λ = α_λ x + σ_λ ε at every λ of the cosine schedule,
whose gradient ∇_z log p_φ(c | z_λ, λ) steers the sampler (`cfg_jax/classifier_guidance.py`).

`NoisyClassifier` is the encoder half of the ADM U-Net (`cfg_jax/models/unet.py`, whose blocks
it imports): the same λ embedding (no class embedding), input conv, down path and middle block, then
ADM's `EncoderUNetModel` head with pool='adaptive': GroupNorm → SiLU → global average pool →
zero-initialised Dense(num_classes), returning float32 logits [B, num_classes].

Training (`train_classifier`) runs a pure train step (u ~ U[0, 1], λ = λ(u) on the config's λ
range, z = α x + σ ε, cross-entropy on the true label) jitted over the `data` mesh in the training
loop of the diffusion model (`cfg_jax/train_loop.py`): the digits input pipeline, clu metric
writers in `<workdir>/classifier` and orbax checkpoints in `<workdir>/classifier/checkpoints`
(exact resume: the noise of step s is fold_in(seed, s), the batch of step s a function of
(seed, s)). At the last step it reports the accuracy on noised test images per λ bin
(`noised_accuracy`).

The classifier's settings are the config's `classifier` section (configs/default.py, sized for the
8×8 digits).

    python -m cfg_jax.main --mode=train_classifier --config=configs/digits.py --workdir=runs/digits \
        [--config.classifier.num_train_steps=2000 ...]
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from cfg_jax import checkpointing, config_lib, diffusion, schedules, train_loop
from cfg_jax import sharding as sharding_lib
from cfg_jax.models import unet

SUBDIR = "classifier"  # <workdir>/classifier: TensorBoard events and checkpoints/
# λ bins of the noised-test accuracy report: [edges[i], edges[i + 1]).
ACCURACY_LOGSNR_EDGES = (-20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 20.0)


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


class NoisyClassifier(unet.ADMBase):
  """ADM encoder classifier of noisy images: ``NoisyClassifier(...)(z, logsnr, train=...)`` →
  logits [B, num_classes]; the U-Net's hyperparameters and λ embedding (no label term).

  Args (call):
    z: [B, H, W, C] noisy images z_λ (NHWC).
    logsnr: [B] log-SNR λ of each z.
    train: enables dropout (then ``rngs={'dropout': key}`` is required when dropout > 0).
  """

  @nn.compact
  def __call__(self, z: jax.Array, logsnr: jax.Array, *, train: bool) -> jax.Array:
    assert z.ndim == 4, f"z must be [B, H, W, C], got shape {z.shape}"
    batch, height, width, _ = z.shape
    assert logsnr.shape == (batch,), f"logsnr must have shape {(batch,)}, got {logsnr.shape}"
    n_levels = len(self.ch_mult)
    unet.check_image_size(height, width, self.ch_mult)
    unet.check_attn_resolutions(height, tuple(self.attn_resolutions), n_levels)
    for m in self.ch_mult:
      self._heads(m * self.ch)
    common = dict(num_groups=self.num_groups, dtype=self.dtype)
    emb = self._logsnr_embedding(logsnr)

    def res_block(h, out_ch, name, down=False):
      block = unet.ResBlock(out_ch, dropout=self.dropout, down=down, name=name, **common)
      return block(h, emb, train)

    def attn_block(h, name):
      return unet.AttnBlock(num_heads=self._heads(h.shape[-1]), name=name, **common)(h)

    h = nn.Conv(
      self.ch_mult[0] * self.ch,
      (3, 3),
      padding=1,
      dtype=self.dtype,
      kernel_init=unet.torch_default_init,
      name="conv_in",
    )(z.astype(self.dtype))
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(h, mult * self.ch, f"down_{level}_res_{i}")
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(h, f"down_{level}_attn_{i}")
      if level != n_levels - 1:
        name = f"down_{level}_downsample"
        if self.resblock_updown:
          h = res_block(h, h.shape[-1], name, down=True)
        else:
          h = unet.Downsample(dtype=self.dtype, name=name)(h)
    h = res_block(h, h.shape[-1], "mid_res_0")
    h = attn_block(h, "mid_attn")
    h = res_block(h, h.shape[-1], "mid_res_1")

    # ADM's pool='adaptive' head, in float32: GN → SiLU → mean over H, W → zero-init linear.
    h = nn.silu(unet.group_norm(h.astype(jnp.float32), self.num_groups, "norm_out"))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(
      self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros_init(), name="logits"
    )(h)


def create_classifier(config: ml_collections.ConfigDict) -> NoisyClassifier:
  """The classifier of `config` (its classifier section, data.num_classes, the λ range)."""
  cc, m = config.classifier, config.model
  return NoisyClassifier(
    num_classes=config.data.num_classes,
    ch=cc.ch,
    ch_mult=tuple(cc.ch_mult),
    num_res_blocks=cc.num_res_blocks,
    attn_resolutions=tuple(cc.attn_resolutions),
    head_channels=cc.head_channels,
    num_groups=cc.num_groups,
    resblock_updown=m.resblock_updown,
    logsnr_min=config.diffusion.logsnr_min,
    logsnr_max=config.diffusion.logsnr_max,
  )


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class ClassifierState:
  params: Any
  opt_state: Any
  step: jax.Array


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam at the classifier's learning rate."""
  return optax.adam(config.classifier.learning_rate)


def init_state(
  rng: jax.Array,
  *,
  model: NoisyClassifier,
  tx: optax.GradientTransformation,
  shape: tuple[int, ...],
) -> ClassifierState:
  params = model.init({"params": rng}, jnp.zeros((1, *shape)), jnp.zeros((1,)), train=False)[
    "params"
  ]
  return ClassifierState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


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


def train_step(
  state: ClassifierState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model: NoisyClassifier,
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


def make_train_step(
  model: NoisyClassifier,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  mesh,
  state_sharding,
):
  """`train_step` jitted over `mesh`: batch split over `data`, state donated and replicated."""
  return sharding_lib.jit_train_step(
    functools.partial(train_step, model=model, tx=tx, config=config), mesh, state_sharding
  )


def create_state(
  config: ml_collections.ConfigDict,
  model: NoisyClassifier,
  tx: optax.GradientTransformation,
  mesh,
  shape,
) -> tuple[ClassifierState, Any]:
  """Initialises the state from fold_in(key(seed), 0xC1A5) directly into its shardings (the
  diffusion model's params come from key(seed) itself)."""
  init = functools.partial(init_state, model=model, tx=tx, shape=tuple(shape))
  return train_loop.init_sharded(
    init, jax.random.fold_in(jax.random.key(config.seed), 0xC1A5), mesh=mesh, config=config
  )


# --------------------------------------------------------------------------------------------
# Accuracy on noised images per λ bin.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The training job.
# --------------------------------------------------------------------------------------------


def _check(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming a bad classifier field (before anything is compiled)."""
  cc = config.classifier
  errors = []
  if cc.batch_size <= 0 or cc.batch_size % num_devices:
    errors.append(
      f"classifier.batch_size ({cc.batch_size}) must be a positive multiple of the "
      f"device count ({num_devices})."
    )
  if cc.num_train_steps < 0:
    errors.append(f"classifier.num_train_steps must be >= 0, got {cc.num_train_steps}.")
  if not cc.learning_rate > 0:
    errors.append(f"classifier.learning_rate must be > 0, got {cc.learning_rate}.")
  schedules.check_logsnr_range(config.diffusion.logsnr_min, config.diffusion.logsnr_max)
  if errors:
    raise ValueError(" ".join(errors))


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> ClassifierState:
  """Trains the noise-conditional classifier; events and checkpoints in `<workdir>/classifier`.

  Resumes from the latest intact checkpoint there. At the last step it writes the accuracy on
  noised test images per λ bin (`noised_accuracy`) to TensorBoard and the log. Returns the state.
  """
  from cfg_jax import data  # lazily: TF import

  config_lib.fill_dataset_fields(config)  # data.num_classes
  _check(config, jax.device_count())
  mesh = sharding_lib.make_mesh_from_config(config)
  spec = data.check_available(config.data)
  cc = config.classifier
  cdir = os.path.join(workdir, SUBDIR)
  os.makedirs(cdir, exist_ok=True)
  model, tx = create_classifier(config), create_optimizer(config)
  state, state_sharding = create_state(config, model, tx, mesh, spec.image_shape)

  def periodic(step: int, state: ClassifierState, *, last: bool, writer) -> None:
    if not last:
      return
    images, labels = data.eval_arrays(config.data)
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
    make_train_step(model, tx, config, mesh, state_sharding),
    workdir=cdir,
    **train_loop.loop_inputs(config, num_steps=cc.num_train_steps, section=SUBDIR),
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


def load_classifier_params(
  config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None, mesh=None
) -> Any:
  """The classifier params of the checkpoint at `step` (None: the newest intact one, skipping a
  corrupt newer one with a warning) in `<workdir>/classifier`.

  Raises checkpointing.CheckpointError when there is none (train it first).
  """
  from cfg_jax import data

  mesh = mesh or sharding_lib.make_mesh_from_config(config)
  model, tx = create_classifier(config), create_optimizer(config)
  shape = tuple(data.dataset_spec(config.data).image_shape)
  abstract = jax.eval_shape(
    functools.partial(init_state, model=model, tx=tx, shape=shape), jax.random.key(0)
  )
  shardings = sharding_lib.state_shardings(abstract, mesh, sharding_lib.mesh_config(config)[1])
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  try:
    ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, SUBDIR), max_to_keep=None, read_only=True
    )
  except checkpointing.CheckpointError as e:
    raise checkpointing.CheckpointError(
      f"no classifier checkpoint in {os.path.join(workdir, SUBDIR)}: train one first with "
      f"python -m cfg_jax.main --mode=train_classifier --config=... --workdir={workdir}"
    ) from e
  if step is not None:
    return ckpt.restore(step, abstract).params
  restored = ckpt.restore_newest(lambda s: ckpt.restore(s, abstract).params)
  if restored is None:
    raise checkpointing.CheckpointError(
      f"no complete classifier checkpoint in {ckpt.directory}: train one first with "
      f"python -m cfg_jax.main --mode=train_classifier --config=... --workdir={workdir}"
    )
  return restored[0]
