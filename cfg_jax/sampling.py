"""Guided ancestral sampling (Algorithm 2 of the paper) as one jitted loop.

`sample` is pure and takes any ε-function (z, λ, labels) → ε: the U-Net, or an exact ε of a known
distribution in tests. Each step makes ONE forward call on [z, z] with labels [c, ∅]. The guidance
strength w (paper's w: 0 = conditional) is a traced per-sample array, so a sweep over w reuses one
compilation. The noise of sample i depends only on (rng, sample_ids[i]), never on the batch layout or
the device count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cfg_jax import diffusion, guidance, schedules
from cfg_jax.guidance import EpsFn


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static settings of the sampling loop (changing them recompiles)."""
  num_steps: int = 256
  logsnr_min: float = schedules.LOGSNR_MIN
  logsnr_max: float = schedules.LOGSNR_MAX
  v: float = 0.3          # variance interpolation (paper: 0.3 at 64×64, 0.2 at 128×128)
  clip_x: bool = True     # clip x̃ to [−1, 1] before each step
  guided: bool = True     # False: conditional half only (no ∅ pass; w is ignored)

  @classmethod
  def from_config(cls, config, *, num_steps: int | None = None) -> "SamplerConfig":
    """From a cfg_jax config's `sampling` and `diffusion` sections (num_steps overrides T)."""
    return cls(num_steps=num_steps or config.sampling.num_steps,
               logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max,
               v=config.sampling.v, clip_x=config.sampling.clip_x)

  def __post_init__(self):
    schedules.check_logsnr_range(self.logsnr_min, self.logsnr_max)
    if self.num_steps < 2:
      raise ValueError(f"sampling.num_steps must be >= 2, got {self.num_steps}.")
    if not 0.0 <= self.v <= 1.0:
      raise ValueError(f"sampling.v must be in [0, 1] (paper: 0.3 at 64x64), got {self.v}.")


def per_sample_keys(rng: jax.Array, sample_ids: jax.Array) -> jax.Array:
  """One key per sample from its global index, independent of how samples are batched."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, sample_ids)


def _normal(keys: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def sample(eps_fn: EpsFn, *, rng: jax.Array, sample_ids: jax.Array, labels: jax.Array,
           w: jax.Array, shape: tuple[int, ...], null_label: int,
           config: SamplerConfig = SamplerConfig()) -> jax.Array:
  """Draws x ~ p(x | c) with guidance strength w; returns x̃ at λ_max, shape [B, *shape].

  For t = 1..T over λ_1 = λ_min < … < λ_T = λ_max: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅),
  x̃ = (z − σ ε̃)/α, and, for t < T, z ← μ̃(z, x̃) + √((σ̃²)^{1−v} (σ²_{λ|λ'})^v) · noise.
  """
  if sample_ids.ndim != 1 or labels.shape != sample_ids.shape:
    raise ValueError(f"sample_ids {sample_ids.shape} and labels {labels.shape} must be [B].")
  b = sample_ids.shape[0]
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (b,))
  keys = per_sample_keys(rng, sample_ids)
  logsnrs = schedules.sampling_logsnrs(config.num_steps, logsnr_min=config.logsnr_min,
                                       logsnr_max=config.logsnr_max)
  last = config.num_steps - 1

  def body(t, carry):
    z, _ = carry
    logsnr = jnp.full((b,), logsnrs[t])
    if config.guided:
      eps = guidance.batched_guided_eps(eps_fn, z=z, logsnr=logsnr, labels=labels, w=w,
                                        null_label=null_label)
    else:
      eps = eps_fn(z, logsnr, labels)
    x_pred = diffusion.x_from_eps(z=z, eps=eps, logsnr=logsnr)
    if config.clip_x:
      x_pred = jnp.clip(x_pred, -1.0, 1.0)
    # At t = T−1 there is no next λ: take λ' = λ_{t+1} clamped and discard the step.
    next_value = logsnrs[jnp.minimum(t + 1, last)]
    mean, _ = diffusion.posterior_mean_variance(z=z, x=x_pred, logsnr=logsnr,
                                                logsnr_next=jnp.full((b,), next_value))
    log_var = diffusion.sampler_log_variance(logsnr=logsnrs[t], logsnr_next=next_value, v=config.v)
    z_next = mean + jnp.exp(0.5 * log_var) * _normal(keys, t + 1, shape)
    return jnp.where(t < last, z_next, z), x_pred

  z0 = _normal(keys, 0, shape)
  _, x = jax.lax.fori_loop(0, config.num_steps, body, (z0, jnp.zeros_like(z0)))
  return x


def unet_eps_fn(apply_fn: Callable[..., jax.Array], params: Any) -> EpsFn:
  """Wraps a Flax apply function as an ε-function in inference mode."""
  return lambda z, logsnr, labels: apply_fn({"params": params}, z, logsnr, labels, train=False)


def make_sampler(apply_fn: Callable[..., jax.Array], *, shape: tuple[int, ...], null_label: int,
                 config: SamplerConfig, mesh: Mesh | None = None):
  """Returns jitted f(params, rng, sample_ids, labels, w) -> x, batch-sharded over `mesh`."""
  def f(params, rng, sample_ids, labels, w):
    return sample(unet_eps_fn(apply_fn, params), rng=rng, sample_ids=sample_ids, labels=labels,
                  w=w, shape=tuple(shape), null_label=null_label, config=config)

  if mesh is None:
    return jax.jit(f)
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(f, in_shardings=(rep, rep, dat, dat, dat), out_shardings=dat)


def generate(sampler, params, rng: jax.Array, *, labels: np.ndarray, w: np.ndarray | float,
             batch_size: int, num_devices: int = 1, first_id: int = 0) -> np.ndarray:
  """Runs `sampler` over all `labels` in batches; pads each batch to a multiple of num_devices.

  Sample i uses id first_id + i, so the result does not depend on batch_size or devices.
  """
  labels = np.asarray(labels, np.int32)
  n = labels.shape[0]
  w = np.broadcast_to(np.asarray(w, np.float32), (n,))
  batch_size = int(np.ceil(batch_size / num_devices) * num_devices)
  out = []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = (-(stop - start)) % num_devices
    ids = np.arange(first_id + start, first_id + stop + pad, dtype=np.int32)
    lab = np.concatenate([labels[start:stop], np.repeat(labels[stop - 1:stop], pad)])
    ww = np.concatenate([w[start:stop], np.repeat(w[stop - 1:stop], pad)])
    x = sampler(params, rng, ids, lab, ww)
    out.append(np.asarray(jax.device_get(x))[: stop - start])
  return np.concatenate(out, axis=0)
