"""Runs the pure sampler of `sampling.py` on devices: `make_sampler` jits it over a mesh for any
guidance method (the model's params and the method's extra networks replicated, the per-sample
arrays batch-sharded), and `generate` draws any number of samples in padded batches, placed as
global arrays when the mesh spans several processes. Sample i always uses id first_id + i, so the
samples do not depend on the batch size or the device count. `write_sample_grids` is the
class-per-row grid of training and distillation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from cfg_jax import guidance, images, sampling, sharding


class Network(NamedTuple):
  """An extra network of a guidance method: `make_fn(params)` is the function the method calls
  (the guide's ε-function, the classifier's logits), `params` its restored parameters."""

  make_fn: Callable[[Any], Callable[..., jax.Array]]
  params: Any


def model_network(apply_fn: Callable[..., jax.Array], params: Any) -> Network:
  """A diffusion model as an extra network (an autoguidance guide): its ε-function."""
  return Network(lambda p: sampling.unet_eps_fn(apply_fn, p), params)


def classifier_network(apply_fn: Callable[..., jax.Array], params: Any) -> Network:
  """A noise-conditional classifier as an extra network (classifier guidance): its logits."""
  return Network(lambda p: guidance.classifier.classifier_logits_fn(apply_fn, p), params)


# f(params, rng, sample_ids, labels, w) -> x: what `generate` drives.
Sampler = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


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
  method: guidance.Method = guidance.CFG,
  networks: Mapping[str, Network] | None = None,
  mesh: Mesh | None = None,
) -> Sampler:
  """The sampler f(params, rng, sample_ids, labels, w) -> x of `apply_fn`'s model with `method`
  and its extra `networks` (by the names the method's `aux` uses), jitted once: w (the strength
  the method reads, e.g. a classifier scale) is traced per sample. Batch-sharded over all devices
  of `mesh` with replicated params (`generate` gathers fsdp-sharded params first; the networks'
  are gathered here, once)."""
  networks = dict(networks or {})
  makers = {k: n.make_fn for k, n in networks.items()}

  def f(params, extra, rng, sample_ids, labels, w):
    return sampling.sample(
      sampling.unet_eps_fn(apply_fn, params),
      rng=rng,
      sample_ids=sample_ids,
      labels=labels,
      w=w,
      shape=tuple(shape),
      null_label=null_label,
      config=config,
      method=method,
      aux={k: make(extra[k]) for k, make in makers.items()},
    )

  jitted = jit_on_mesh(f, mesh=mesh, num_replicated=3)
  extra = sharding.gather_replicated({k: n.params for k, n in networks.items()})

  def run(params, rng, ids, labels, w):
    return jitted(params, extra, rng, ids, labels, w)

  run.jitted = jitted  # the one compiled function (its cache is what a sweep must not grow)
  return run


def generate(
  sampler: Sampler,
  params: Any,
  rng: jax.Array,
  *,
  labels: np.ndarray,
  w: np.ndarray | float,
  batch_size: int,
  first_id: int = 0,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Runs `sampler` over all `labels` in batches; pads each batch to a multiple of the mesh size.

  Sample i uses id first_id + i, so the result does not depend on batch_size or devices. With
  `mesh` (the sampler's; needed when it spans several processes) each batch is placed as global
  arrays split over it; every process returns all samples. Params sharded over a mesh axis
  (fsdp training) are gathered to replicated once per call.
  """
  params = sharding.gather_replicated(params)
  labels = np.asarray(labels, np.int32)
  n = labels.shape[0]
  if mesh is not None:
    num_devices, dat = mesh.size, sharding.batch_sharded(mesh)
    put = lambda a: sharding.host_to_global(a, dat)
  else:
    num_devices, put = 1, lambda a: a
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


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """Labels of a grid with one row per class (at most 10 classes shown)."""
  classes = np.arange(min(num_classes, 10))
  return np.repeat(classes, per_class).astype(np.int32)


def samples_per_w(
  sampler: Sampler, params, config, mesh, labels: np.ndarray, w_values, *, salt: int
) -> Iterator[tuple[float, np.ndarray]]:
  """(w, samples of `labels` at w) for each w, from the same noise (seed and `salt`)."""
  rng = jax.random.fold_in(jax.random.key(config.seed), salt)
  for w in w_values:
    x = generate(
      sampler,
      params,
      rng,
      labels=labels,
      w=float(w),
      batch_size=config.sampling.batch_size,
      mesh=mesh,
    )
    yield float(w), x


def write_sample_grids(
  *, writer, workdir: str, step: int, sampler: Sampler, params, config, mesh
) -> dict[float, str]:
  """Samples a class-per-row grid for each w in guidance.w_values; writes PNGs and TB images."""
  per_class = config.training.grid_samples_per_class
  labels = grid_labels(config.data.num_classes, per_class)
  paths, tb_images = {}, {}
  ws = config.guidance.w_values
  for w, x in samples_per_w(sampler, params, config, mesh, labels, ws, salt=1_000_003):
    grid = images.make_grid(x, ncols=per_class)
    if jax.process_index() == 0:
      path = os.path.join(workdir, "samples", f"step_{step:08d}_w{w:g}.png")
      images.save_png(grid, path)
      paths[float(w)] = path
    tb_images[f"samples/w={w:g}"] = grid[None]
  writer.write_images(step, tb_images)
  return paths
