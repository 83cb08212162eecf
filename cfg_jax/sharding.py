"""Device mesh and shardings: a 2-D (`data`, `fsdp`) mesh with explicit NamedShardings.

The batch is split over both axes; parameters, EMA parameters and optimizer state shard their
largest fsdp-divisible dimension over `fsdp` when large enough (ZeRO-3 style), everything else is
replicated; the same code runs on 1 CPU, on fake CPU devices and on a pod slice. The rules and the
device order are in docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Arrays with fewer elements stay replicated under fsdp (biases, norms: gathering them costs
# more latency than the memory they take). configs/default.py sets mesh.fsdp_min_size to this.
DEFAULT_FSDP_MIN_SIZE = 2**16


def mesh_axis_sizes(num_devices: int, fsdp: int) -> tuple[int, int]:
  """(data, fsdp) sizes of the mesh over `num_devices` devices, data = num_devices / fsdp; raises
  ValueError unless fsdp >= 1 divides num_devices."""
  if fsdp < 1:
    raise ValueError(
      f"mesh.fsdp must be >= 1 (1 = data parallel, everything replicated), got {fsdp}."
    )
  if num_devices % fsdp:
    divisors = [k for k in range(1, num_devices + 1) if num_devices % k == 0]
    raise ValueError(
      f"mesh.fsdp={fsdp} does not divide the {num_devices} devices (the mesh is "
      f"data = devices / fsdp by fsdp); use one of {divisors}, e.g. "
      f"--config.mesh.fsdp={max(k for k in divisors if k <= fsdp)}."
    )
  return num_devices // fsdp, fsdp


def check_batch_size(batch_size: int, mesh_shape: tuple[int, int], *, field: str) -> None:
  """Raises ValueError unless the global batch `batch_size` (the config field `field`) splits
  evenly over every device of a (data, fsdp) mesh, as `global_batch` and the train step need."""
  data, fsdp = mesh_shape
  n = data * fsdp
  if batch_size < 1:
    raise ValueError(f"{field} must be >= 1, got {batch_size}.")
  if batch_size % n:
    raise ValueError(
      f"{field}={batch_size} is not divisible by the {n} devices of the mesh "
      f"(data={data} x fsdp={fsdp}): the batch splits over every device; use a "
      f"multiple of {n}, e.g. {math.ceil(batch_size / n) * n}."
    )


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
  """A (data, fsdp) mesh over the first `num_devices` devices (default: all, across all
  processes), with data = num_devices / fsdp."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible.")
    devices = devices[:num_devices]
  shape = mesh_axis_sizes(len(devices), fsdp)
  return Mesh(np.asarray(devices).reshape(shape), BATCH_AXES)


def mesh_config(config: Any) -> tuple[int, int]:
  """(fsdp, fsdp_min_size) of `config.mesh`; raises ValueError if fsdp_min_size < 0."""
  fsdp, min_size = int(config.mesh.fsdp), int(config.mesh.fsdp_min_size)
  if min_size < 0:
    raise ValueError(
      f"mesh.fsdp_min_size must be >= 0 (arrays with fewer elements stay "
      f"replicated), got {min_size}."
    )
  return fsdp, min_size


def make_mesh_from_config(config: Any, num_devices: int | None = None) -> Mesh:
  """The mesh of `config.mesh` (fsdp size) over all devices (or the first `num_devices`)."""
  return make_mesh(num_devices, fsdp=mesh_config(config)[0])


def fsdp_size(mesh: Mesh) -> int:
  return dict(mesh.shape).get(FSDP_AXIS, 1)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device: over `data` and `fsdp` (those in the mesh)."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes))


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> P:
  """P() or the spec that puts `fsdp` on the largest dimension divisible by the fsdp size
  (ties: the last such dimension, e.g. a kernel's output channels)."""
  if fsdp <= 1 or math.prod(shape) < max(min_size, 1):
    return P()
  candidates = [i for i, d in enumerate(shape) if d % fsdp == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*([None] * axis + [FSDP_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
  """Shardings of a train state (params, EMA, optimizer state, step, ...), leaf by leaf: see
  `param_spec`. Everything is replicated on a mesh whose fsdp axis has size 1."""
  fsdp = fsdp_size(mesh)
  return jax.tree.map(
    lambda x: NamedSharding(mesh, param_spec(tuple(np.shape(x)), fsdp, min_size)), abstract_state
  )


def jit_train_step(step_fn, mesh: Mesh, state_sharding: Any):
  """jit of step_fn(state, batch, rng) -> (state, metrics): batch split over all devices, rng
  and metrics replicated, the state in `state_sharding` and donated (updated in place)."""
  rep, dat = replicated(mesh), batch_sharded(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(state_sharding, dat, rep),
    out_shardings=(state_sharding, rep),
    donate_argnums=(0,),
  )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays split over all devices."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def host_to_global(x: Any, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds in full (sample ids, labels, eval images, weights read
  from a file) as a global jax.Array in `sharding`: each process fills only its own devices'
  shards, so nothing crosses processes. jit refuses plain numpy for shardings that span several
  processes; on one process this equals jax.device_put."""
  if isinstance(x, jax.Array):
    return x if x.sharding == sharding else jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def gather_replicated(tree: Any) -> Any:
  """`tree` with every array that is sharded over a mesh axis (e.g. fsdp-sharded params) copied
  to a fully replicated array on the same mesh; other leaves unchanged.

  Sampling and evaluation take replicated params: an all-gather once per call is cheap next to a
  sampling loop, and the EMA params alone fit on any device that trained the model.
  """
  leaves = jax.tree.leaves(tree)
  meshes = {
    id(x.sharding.mesh): x.sharding.mesh
    for x in leaves
    if isinstance(getattr(x, "sharding", None), NamedSharding)
    and not x.sharding.is_fully_replicated
  }
  if not meshes:
    return tree
  if len(meshes) > 1:
    raise ValueError("gather_replicated: the arrays live on different meshes.")
  rep = replicated(next(iter(meshes.values())))
  return jax.tree.map(
    lambda x: (
      jax.device_put(x, rep)
      if isinstance(getattr(x, "sharding", None), NamedSharding)
      and not x.sharding.is_fully_replicated
      else x
    ),
    tree,
  )


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) global array as a numpy array on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sharded_batch_fn(fn, params: Any, mesh: Mesh):
  """Wraps fn(params, x) -> pytree of [N, ...] arrays to run with x split over all devices.

  The returned callable takes a host batch of any size N (padded to a multiple of the device
  count and trimmed back) and returns numpy arrays. `params` are replicated.
  """
  jitted = jax.jit(
    fn, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=batch_sharded(mesh)
  )
  rep, dat = replicated(mesh), batch_sharded(mesh)
  params = jax.tree.map(lambda p: host_to_global(p, rep), gather_replicated(params))

  def apply(x: np.ndarray):
    n = len(x)
    pad = (-n) % mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = jitted(params, host_to_global(x, dat))
    return jax.tree.map(lambda y: to_host(y)[:n], out)

  return apply
