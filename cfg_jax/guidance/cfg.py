"""Classifier-free guidance (Ho & Salimans 2022): label dropout in training, ε̃ in sampling.

Algorithm 1 trains one network on c and on ∅ (c ← ∅ with probability p_uncond); Algorithm 2
samples with ε̃ = (1 + w) ε(z, c) − w ε(z, ∅) from ONE forward call on [z, z] with labels [c, ∅].
w is the paper's guidance strength: w = 0 is the conditional model, w = −1 the unconditional one;
codebases that write s = 1 + w (a "guidance scale", e.g. diffusers' guidance_scale) mean s = 1
where we mean w = 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cfg_jax.guidance import core


def drop_labels(
  rng: jax.Array, labels: jax.Array, *, p_uncond: float | jax.Array, null_label: int
) -> jax.Array:
  """c ← ∅ with probability p_uncond, independently per example (Algorithm 1, line 3)."""
  drop = jax.random.bernoulli(rng, p_uncond, labels.shape)
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def check_p_uncond(p_uncond: float) -> None:
  """Raises ValueError unless p_uncond (guidance.p_uncond) is a probability."""
  if not 0.0 <= p_uncond <= 1.0:
    raise ValueError(
      f"guidance.p_uncond must be in [0, 1] (paper: 0.1, 0.2 or 0.5), got {p_uncond}."
    )


@dataclasses.dataclass(frozen=True)
class ClassifierFree(core.Method):
  """ε̃ = (1 + w) ε(z, c) − w ε(z, ∅), the paper's guidance (no config fields of its own)."""

  name = "cfg"
  summary = "classifier-free, the paper's"

  def guided(self, eps_fn, aux, step, state):
    del aux
    eps_c, eps_u = conditional_and_null(eps_fn, step)
    return core.Prediction(
      core.guided_eps(eps_cond=eps_c, eps_uncond=eps_u, w=step.w), eps_c
    ), state


def conditional_and_null(eps_fn: core.EpsFn, step: core.Step) -> tuple[jax.Array, jax.Array]:
  """(ε(z, c), ε(z, ∅)) from ONE forward call on [z, z] with labels [c, ∅]."""
  null = jnp.full_like(step.labels, step.null_label)
  return core.paired_forward(eps_fn, z=step.z, logsnr=step.logsnr, labels=step.labels, other=null)
