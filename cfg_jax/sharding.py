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


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays sharded over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
