"""Classifier guidance (Dhariwal & Nichol 2021), the baseline that classifier-free guidance replaces.

ε̂(z, λ, c) = ε_θ(z, λ, c_model) − s · σ_λ · ∇_z log p_φ(c | z, λ), with s the classifier scale and
p_φ the noise-conditional classifier of --mode=train_classifier (`aux['classifier']`, (z, λ) →
logits); c_model is the requested class ('cond') or ∅ ('null', for an unconditional model). The
scale rides in the sampler's per-sample strength slot (a sweep over s compiles once). The
derivation is in docs/samplers.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cfg_jax import schedules
from cfg_jax.guidance import core

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
  """`core.per_row`, with a clear error when a [B] array does not match the batch of `like`."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 1 and x.shape != like.shape[:1]:
    raise ValueError(
      f"{name} has shape {x.shape} but the ε-function got a batch of {like.shape[0]}: give one "
      f"{name} per sample."
    )
  return core.per_row(x, like.astype(jnp.float32))


def check_model_labels(model_labels: str) -> None:
  if model_labels not in MODEL_LABELS:
    raise ValueError(f"model_labels must be one of {MODEL_LABELS}, got {model_labels!r}.")


def _model_labels(labels: jax.Array, model_labels: str, num_classes: int) -> jax.Array:
  return labels if model_labels == "cond" else jnp.full_like(labels, num_classes)


def classifier_guided(
  eps_fn: core.EpsFn,
  logits_fn: LogitsFn,
  *,
  z: jax.Array,
  logsnr: jax.Array,
  labels: jax.Array,
  scale: float | jax.Array,
  model_labels: str = "cond",
  null_label: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(ε̂, ε_θ(z, λ, c_model)): ε̂ = ε_θ − scale · σ_λ · ∇_z log p_φ(c | z, λ); scale a scalar or
  [B] (0 returns ε_θ exactly); rows whose requested label is ∅ get no classifier term."""
  check_model_labels(model_labels)
  k = jax.eval_shape(logits_fn, z, logsnr).shape[-1]
  if null_label is not None and null_label != k:
    raise ValueError(
      f"null_label {null_label} != the classifier's {k} classes: ∅ must be the class id "
      "num_classes."
    )
  s = _per_row(scale, z, "scale")
  grad = log_prob_grad(logits_fn, z=z, logsnr=logsnr, labels=labels)
  _, sigma = schedules.alpha_sigma(_per_row(logsnr, z, "logsnr"))
  eps = eps_fn(z, logsnr, _model_labels(labels, model_labels, k))
  return eps - (s * sigma * grad).astype(z.dtype), eps


def classifier_guided_eps_fn(
  eps_fn: core.EpsFn,
  classifier_apply: Callable[..., jax.Array],
  classifier_params: Any,
  *,
  scale: float | jax.Array,
  model_labels: str = "cond",
  null_label: int | None = None,
) -> core.EpsFn:
  """`classifier_guided` as an ε-function (z, λ, labels) → ε̂, for a Flax-style classifier."""
  check_model_labels(model_labels)
  logits_fn = classifier_logits_fn(classifier_apply, classifier_params)

  def f(z: jax.Array, logsnr: jax.Array, labels: jax.Array) -> jax.Array:
    return classifier_guided(
      eps_fn,
      logits_fn,
      z=z,
      logsnr=logsnr,
      labels=labels,
      scale=scale,
      model_labels=model_labels,
      null_label=null_label,
    )[0]

  return f


@dataclasses.dataclass(frozen=True)
class ClassifierGuidance(core.Method):
  """Fields: evaluation.classifier_scales (the swept s), evaluation.classifier_model_labels,
  evaluation.classifier_workdir ('' = the evaluated workdir) holding <workdir>/classifier."""

  name = "classifier"
  summary = "classifier guidance by <workdir>/classifier of --mode=train_classifier, sweeps evaluation.classifier_scales"
  strength_field = "scale"
  symbol = "s"
  tag = "classifier_guidance"
  plot_stem = "tradeoff_cg"
  file_prefix = "classifier_"
  sweep_title = "classifier guidance, over s"
  settings_name = "classifier_guidance"

  model_labels: str = "cond"
  classifier_workdir: str = ""

  def __post_init__(self):
    check_model_labels(self.model_labels)

  @classmethod
  def from_config(cls, config) -> ClassifierGuidance:
    ev = config.evaluation
    return cls(model_labels=ev.classifier_model_labels, classifier_workdir=ev.classifier_workdir)

  @classmethod
  def strength_errors(cls, values, *, field: str) -> list[str]:
    bad = [s for s in values if not math.isfinite(s) or s < 0]
    return [f"{field} holds {bad}: a classifier scale must be finite and >= 0."] if bad else []

  @classmethod
  def config_errors(cls, config) -> list[str]:
    ev = config.evaluation
    errors = cls.strength_errors(ev.classifier_scales, field="evaluation.classifier_scales")
    if ev.classifier_model_labels not in MODEL_LABELS:
      errors.append(
        f"evaluation.classifier_model_labels must be 'cond' (eps(z, c), a conditional model) or "
        f"'null' (eps(z, null), the unconditional model of p_uncond = 1), got "
        f"{ev.classifier_model_labels!r}."
      )
    elif ev.classifier_model_labels == "cond" and config.guidance.p_uncond >= 1.0:
      errors.append(
        "evaluation.classifier_model_labels='cond' with guidance.p_uncond=1: this model never "
        "saw a class label, so eps(z, c) is meaningless; set "
        "--config.evaluation.classifier_model_labels=null."
      )
    return errors

  def networks(self, config) -> tuple[core.NetworkSpec, ...]:
    del config
    fields = {"workdir": "evaluation.classifier_workdir"}
    return (core.NetworkSpec("classifier", "classifier", self.classifier_workdir, fields=fields),)

  def strengths(self, config) -> tuple[float, ...]:
    return tuple(config.evaluation.classifier_scales)

  def describe(self, config, info):
    del config, info
    return {
      "model_labels": self.model_labels,
      "classifier_workdir": self.classifier_workdir or "<workdir>",
    }

  def unguided(self, eps_fn, aux, step):
    k = jax.eval_shape(aux["classifier"], step.z, step.logsnr).shape[-1]
    return eps_fn(step.z, step.logsnr, _model_labels(step.labels, self.model_labels, k))

  def guided(self, eps_fn, aux, step, state):
    eps, eps_c = classifier_guided(
      eps_fn,
      aux["classifier"],
      z=step.z,
      logsnr=step.logsnr,
      labels=step.labels,
      scale=step.w,
      model_labels=self.model_labels,
      null_label=step.null_label,
    )
    return core.Prediction(eps, eps_c), state
