"""Runs the pure sampler of `sampling.py` on devices: `make_sampler` jits it over a mesh (params
replicated, the per-sample arrays batch-sharded), and `generate` draws any number of samples in
padded batches, placed as global arrays when the mesh spans several processes. Sample i always
uses id first_id + i, so the samples do not depend on the batch size or the device count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from cfg_jax import sampling, sharding


def jit_on_mesh(f: Callable[..., jax.Array], *, mesh: Mesh | None, num_replicated: int):
  """jax.jit of f(*replicated, sample_ids, labels, w) -> x. With `mesh`, the first
  `num_replicated` arguments (params, rng, ...) are replicated and the three per-sample arrays
  and x batch-sharded over all its devices."""
  if mesh is None:
    return jax.jit(f)
  rep, dat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(f, in_shardings=(rep,) * num_replicated + (dat,) * 3, out_shardings=dat)


def make_sampler(
  apply_fn: Callable[..., jax.Array],
  *,
  shape: tuple[int, ...],
  null_label: int,
  config: sampling.SamplerConfig,
  mesh: Mesh | None = None,
):
  """Returns jitted f(params, rng, sample_ids, labels, w) -> x, batch-sharded over all devices of
  `mesh` with replicated params (`generate` gathers fsdp-sharded params first)."""

  def f(params, rng, sample_ids, labels, w):
    return sampling.sample(
      sampling.unet_eps_fn(apply_fn, params),
      rng=rng,
      sample_ids=sample_ids,
      labels=labels,
      w=w,
      shape=tuple(shape),
      null_label=null_label,
      config=config,
    )

  return jit_on_mesh(f, mesh=mesh, num_replicated=2)


def bind_second_params(sampler, second_params: Any):
  """f(params, second_params, rng, ids, labels, w) → g(params, rng, ids, labels, w), the signature
  `generate` calls, for samplers of two networks (classifier guidance, autoguidance); the second
  network's fsdp-sharded params are gathered to replicated here, once."""
  second_params = sharding.gather_replicated(second_params)
  return lambda params, rng, ids, labels, w: sampler(params, second_params, rng, ids, labels, w)


def generate(
  sampler,
  params: Any,
  rng: jax.Array,
  *,
  labels: np.ndarray,
  w: np.ndarray | float,
  batch_size: int,
  num_devices: int = 1,
  first_id: int = 0,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Runs `sampler` over all `labels` in batches; pads each batch to a multiple of num_devices.

  Sample i uses id first_id + i, so the result does not depend on batch_size or devices. With
  `mesh` (the sampler's; needed when it spans several processes) num_devices is its size and
  each batch is placed as global arrays split over it; every process returns all samples.
  Params sharded over a mesh axis (fsdp training) are gathered to replicated once per call.
  """
  params = sharding.gather_replicated(params)
  labels = np.asarray(labels, np.int32)
  n = labels.shape[0]
  if mesh is not None:
    num_devices, dat = mesh.size, sharding.batch_sharded(mesh)
    put = lambda a: sharding.host_to_global(a, dat)
  else:
    put = lambda a: a
  w = np.broadcast_to(np.asarray(w, np.float32), (n,))
  batch_size = int(np.ceil(batch_size / num_devices) * num_devices)
  out = []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = (-(stop - start)) % num_devices
    ids = np.arange(first_id + start, first_id + stop + pad, dtype=np.int32)
    lab = np.concatenate([labels[start:stop], np.repeat(labels[stop - 1 : stop], pad)])
    ww = np.concatenate([w[start:stop], np.repeat(w[stop - 1 : stop], pad)])
    x = sampler(params, rng, put(ids), put(lab), put(ww))
    out.append(sharding.to_host(x)[: stop - start])
  return np.concatenate(out, axis=0)
