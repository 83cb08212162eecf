"""Classifier-free guidance: label dropout for training and the guided ε for sampling.

w is the paper's guidance strength: ε̃ = (1 + w) ε_θ(z, c) − w ε_θ(z, ∅), so w = 0 is the plain
conditional model and w = −1 the unconditional one. Codebases that write s = 1 + w (a "guidance
scale", e.g. diffusers' guidance_scale) mean s = 1 where we mean w = 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# (z [B,H,W,C], λ [B], labels [B]) -> ε [B,H,W,C]
EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def drop_labels(rng: jax.Array, labels: jax.Array, *, p_uncond: float | jax.Array,
                null_label: int) -> jax.Array:
  """c ← ∅ with probability p_uncond, independently per example (Algorithm 1, line 3)."""
  drop = jax.random.bernoulli(rng, p_uncond, labels.shape)
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def guided_eps(*, eps_cond: jax.Array, eps_uncond: jax.Array, w: jax.Array) -> jax.Array:
  """ε̃ = (1 + w) ε_c − w ε_∅, with w a scalar or one value per sample ([B])."""
  w = jnp.asarray(w, eps_cond.dtype)
  if w.ndim == 1:
    w = w.reshape(w.shape + (1,) * (eps_cond.ndim - 1))
  return eps_cond + w * (eps_cond - eps_uncond)


def batched_guided_eps(eps_fn: EpsFn, *, z: jax.Array, logsnr: jax.Array, labels: jax.Array,
                       w: jax.Array, null_label: int) -> jax.Array:
  """Guided ε from ONE forward call on [z, z] with labels [c, ∅]."""
  b = z.shape[0]
  eps = eps_fn(jnp.concatenate([z, z], axis=0),
               jnp.concatenate([logsnr, logsnr], axis=0),
               jnp.concatenate([labels, jnp.full_like(labels, null_label)], axis=0))
  return guided_eps(eps_cond=eps[:b], eps_uncond=eps[b:], w=w)
