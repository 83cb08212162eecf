"""Device mesh and shardings: data parallelism over a `data` axis with explicit NamedShardings.

The same code runs on 1 CPU, on 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8) and on a pod slice: the batch is split over the
`data` axis; parameters and optimizer state are replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (default: all, across all processes)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings of the train state: replicated (pure data parallelism)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def jit_train_step(step_fn, mesh: Mesh, state_sharding: Any):
  """jit of step_fn(state, batch, rng) -> (state, metrics): batch split over `data`, rng and
  metrics replicated, the state in `state_sharding` and donated (updated in place)."""
  rep, dat = replicated(mesh), batch_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(state_sharding, dat, rep),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays sharded over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) global array as a numpy array on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sharded_batch_fn(fn, params: Any, mesh: Mesh):
  """Wraps fn(params, x) -> pytree of [N, ...] arrays to run with x split over `data`.

  The returned callable takes a host batch of any size N (padded to a multiple of the device
  count and trimmed back) and returns numpy arrays.
  """
  jitted = jax.jit(fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=batch_sharded(mesh))
  params = jax.device_put(params, replicated(mesh))

  def apply(x: np.ndarray):
    n = len(x)
    pad = (-n) % mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = jitted(params, x)
    return jax.tree.map(lambda y: to_host(y)[:n], out)
  return apply
