"""Classifier guidance (Dhariwal & Nichol 2021), the baseline of classifier-free guidance.

ε̂(z, λ, c) = ε_θ(z, λ, c_model) − s · σ_λ · ∇_z log p_φ(c | z, λ), with s the classifier scale and
p_φ a noise-conditional classifier, as an ordinary ε-function for `sampling.sample` with
`SamplerConfig(guided=False)`; c_model is the requested class ('cond') or ∅ ('null', for an
unconditional model), and the scale is traced per sample (a sweep compiles once). The derivation
and the classifier interface are in docs/samplers.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cfg_jax import sampling, sampling_runner, schedules
from cfg_jax.guidance import EpsFn

MODEL_LABELS = ("cond", "null")
# (z [B, ...], λ [B]) -> logits [B, K]
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def classifier_logits_fn(
  classifier_apply: Callable[..., jax.Array], classifier_params: Any
) -> LogitsFn:
  """A Flax-style classifier apply function as (z, λ) -> float32 logits, in inference mode."""
  return lambda z, logsnr: classifier_apply(
    {"params": classifier_params}, z, logsnr, train=False
  ).astype(jnp.float32)


def log_prob_grad(
  logits_fn: LogitsFn, *, z: jax.Array, logsnr: jax.Array, labels: jax.Array
) -> jax.Array:
  """∇_z log p_φ(c | z, λ) = ∇_z log_softmax(logits)[c] per row, [B, ...]; rows whose label is
  outside [0, K) (∅ = K) get 0."""

  def total(z):
    log_p = jax.nn.log_softmax(logits_fn(z, logsnr), axis=-1)
    k = log_p.shape[-1]
    valid = (labels >= 0) & (labels < k)
    picked = jnp.take_along_axis(log_p, jnp.clip(labels, 0, k - 1)[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(valid, picked, 0.0))

  return jax.grad(total)(z)


def _per_row(x: jax.Array, like: jax.Array, name: str) -> jax.Array:
  """A scalar, or a [B] array reshaped to [B, 1, ...] to broadcast over `like` [B, ...]."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 0:
    return x
  if x.shape != like.shape[:1]:
    raise ValueError(
      f"{name} has shape {x.shape} but the ε-function got a batch of "
      f"{like.shape[0]}: give one {name} per sample, and sample with "
      "SamplerConfig(guided=False) (the [z, z] batch of CFG doubles it)."
    )
  return x.reshape(x.shape + (1,) * (like.ndim - 1))


def classifier_guided_eps_fn(
  eps_fn: EpsFn,
  classifier_apply: Callable[..., jax.Array],
  classifier_params: Any,
  *,
  scale: float | jax.Array,
  model_labels: str = "cond",
  null_label: int | None = None,
) -> EpsFn:
  """ε̂(z, λ, c) = ε_θ(z, λ, c_model) − scale · σ_λ · ∇_z log p_φ(c | z, λ), an ε-function.

  Args:
    eps_fn: the model's ε-function (z, λ, labels) -> ε.
    classifier_apply, classifier_params: the classifier (Flax-style apply, see module doc).
    scale: s, a scalar or one value per sample ([B]); 0 returns ε_θ exactly.
    model_labels: 'cond' (ε_θ gets c) or 'null' (ε_θ gets ∅; the classifier still gets c).
    null_label: ∅; default the classifier's number of classes K (must equal it if given).

  Rows whose requested label is ∅ get ε_θ(z, λ, ∅) and no classifier term.
  """
  if model_labels not in MODEL_LABELS:
    raise ValueError(f"model_labels must be one of {MODEL_LABELS}, got {model_labels!r}.")
  logits_fn = classifier_logits_fn(classifier_apply, classifier_params)

  def f(z: jax.Array, logsnr: jax.Array, labels: jax.Array) -> jax.Array:
    k = jax.eval_shape(logits_fn, z, logsnr).shape[-1]
    if null_label is not None and null_label != k:
      raise ValueError(
        f"null_label {null_label} != the classifier's {k} classes: ∅ must be "
        "the class id num_classes."
      )
    s = _per_row(scale, z, "scale")
    grad = log_prob_grad(logits_fn, z=z, logsnr=logsnr, labels=labels)
    _, sigma = schedules.alpha_sigma(_per_row(logsnr, z, "logsnr"))
    model_y = labels if model_labels == "cond" else jnp.full_like(labels, k)
    return eps_fn(z, logsnr, model_y) - (s * sigma * grad).astype(z.dtype)

  return f


def make_classifier_guided_sampler(
  apply_fn: Callable[..., jax.Array],
  classifier_apply: Callable[..., jax.Array],
  *,
  shape: tuple[int, ...],
  null_label: int,
  config: sampling.SamplerConfig,
  scale: float | None = None,
  model_labels: str = "cond",
  mesh: Mesh | None = None,
):
  """Returns jitted f(params, classifier_params, rng, sample_ids, labels, w) -> x.

  f has `sampling_runner.make_sampler`'s signature plus the classifier params. With scale=None
  (the default) its per-sample w slot carries the classifier scale s (traced: a sweep over s
  compiles once, and `sampling_runner.generate` drives it through `bind_classifier_params`); a
  number fixes s and w is ignored. `config.guided` must be False (conditional half only).
  Batch-sharded over `mesh` when given (params of both networks replicated).
  """
  if config.guided:
    raise ValueError(
      "classifier guidance samples the conditional half only: use "
      "SamplerConfig(guided=False, ...), e.g. "
      "dataclasses.replace(config, guided=False)."
    )
  if model_labels not in MODEL_LABELS:
    raise ValueError(f"model_labels must be one of {MODEL_LABELS}, got {model_labels!r}.")

  def f(params, classifier_params, rng, sample_ids, labels, w):
    s = jnp.broadcast_to(jnp.asarray(w, jnp.float32), sample_ids.shape) if scale is None else scale
    eps = classifier_guided_eps_fn(
      sampling.unet_eps_fn(apply_fn, params),
      classifier_apply,
      classifier_params,
      scale=s,
      model_labels=model_labels,
      null_label=null_label,
    )
    return sampling.sample(
      eps,
      rng=rng,
      sample_ids=sample_ids,
      labels=labels,
      w=w,
      shape=tuple(shape),
      null_label=null_label,
      config=config,
    )

  return sampling_runner.jit_on_mesh(f, mesh=mesh, num_replicated=3)


def bind_classifier_params(sampler, classifier_params: Any):
  """f(params, classifier_params, rng, ids, labels, w) → g(params, rng, ids, labels, w), the
  signature `sampling_runner.generate` calls (w: the per-sample scale when the sampler's
  scale=None), by `sampling_runner.bind_second_params`."""
  return sampling_runner.bind_second_params(sampler, classifier_params)
