"""Plans a TPU run on any host: the config's programs (train step, guided sampling step, Inception
feature step) compiled ahead of time by the TPU compiler itself (libtpu) for a named slice, from
shapes only, with each program's per-chip HBM from the compiler's buffer assignment, FLOPs and
bytes from its cost analysis, and a roofline estimate of the step time. docs/scaling.md explains
the figures and their limits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from cfg_jax import guidance, models, sampling, sharding, train_state, training
from cfg_jax.errors import UserError
from cfg_jax.evaluation import features as features_lib
from cfg_jax.evaluation import inception

GiB = 2**30
PROGRAMS = ("train", "sample", "features")
HEADROOM = 0.9  # search_batch keeps a tenth of the chip's HBM free


class Chip(NamedTuple):
  hbm_bytes: int  # HBM per chip
  peak_flops: float  # dense bfloat16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  source: str


# One place for the chips' figures: Google Cloud's TPU system architecture pages.
CHIPS = {
  "v4": Chip(32 * GiB, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
  "v5e": Chip(16 * GiB, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
  "v5p": Chip(95 * GiB, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
  "v6e": Chip(32 * GiB, 918e12, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
}
DIMS = {"v4": 3, "v5e": 2, "v5p": 3, "v6e": 2}  # the topology's dimensions per version


class PlanError(UserError):
  """A plan that cannot be made (no libtpu, an unknown topology) or a program that does not fit."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """'v5e:16x16' -> ('v5e', (16, 16)); raises PlanError naming the valid forms."""
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)", name.strip())
  dims = tuple(int(d) for d in m.group(2).split("x")) if m else ()
  if not m or len(dims) != DIMS[m.group(1)] or min(dims) < 1:
    examples = "v4:2x2x1, v4:4x4x8, v5e:4x4, v5e:16x16, v5p:4x4x4, v6e:16x16"
    raise PlanError(
      f"plan.topology={name!r} is not a TPU slice name: VERSION:AxB (v5e, v6e) or VERSION:AxBxC "
      f"(v4, v5p), in chips, e.g. {examples}."
    )
  return m.group(1), dims


def topology_devices(name: str, num_slices: int = 1) -> list:
  """The compile-only TPU devices of `num_slices` slices of topology `name` (one per chip; v4 as
  megacore), from libtpu, with no TPU attached; ordered by slice, then device id."""
  version, _ = parse_topology(name)
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise PlanError(
      "--mode=plan compiles with the TPU compiler, which comes with libtpu: "
      "pip install 'cfg_jax[tpu-plan]' (jax[tpu] at the jax pin; it runs on a CPU-only host)."
    ) from None
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several planning processes
  from jax.experimental import topologies

  kwargs = {"chip_config_name": "megacore"} if version == "v4" else {}
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  devices = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices
  return sorted(devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


def make_mesh(devices: list, fsdp: int) -> Mesh:
  """The (data, fsdp) mesh of cfg_jax/sharding.py over `devices`: fsdp groups are consecutive,
  so they stay inside a slice when fsdp divides the chips of one."""
  shape = sharding.mesh_axis_sizes(len(devices), fsdp)
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), sharding.BATCH_AXES)


def _spec(x, s: NamedSharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)


def _key_spec(mesh: Mesh) -> jax.ShapeDtypeStruct:
  return _spec(jax.eval_shape(lambda: jax.random.key(0)), sharding.replicated(mesh))


class Program(NamedTuple):
  """A jitted function and the sharded shapes it is compiled for; `batch` is its global batch."""

  fn: Any
  args: tuple
  batch: int


def train_program(config, mesh: Mesh, *, batch_per_chip: int | None = None) -> Program:
  """`training.make_train_step` on the state's shardings (`sharding.state_shardings`) and the
  global batch (training.batch_size, or batch_per_chip per chip) split over every chip."""
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  shape = models.image_shape(config)
  init = functools.partial(train_state.init_state, model=model, tx=tx, shape=shape)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  b = config.training.batch_size if batch_per_chip is None else batch_per_chip * mesh.size
  dat = sharding.batch_sharded(mesh)
  batch = {
    "image": jax.ShapeDtypeStruct((b, *shape), jnp.float32, sharding=dat),
    "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=dat),
  }
  state = jax.tree.map(_spec, abstract, shardings)
  step = training.make_train_step(model, tx, config, mesh, shardings)
  return Program(step, (state, batch, _key_spec(mesh)), b)


def sample_program(config, mesh: Mesh, *, params_sharded: bool = False) -> Program:
  """One step of the guided sampler (`sampling.denoise_step` and the sampler's move) at
  sampling.batch_size: the method's batched forward ([z, z] with [c, ∅]: 2B for CFG). The EMA
  params are replicated, as sampling and evaluation run them, or fsdp-sharded."""
  model = models.create_model(config)
  shape = models.image_shape(config)
  cfg = sampling.SamplerConfig.from_config(config)
  method = guidance.from_config(config, section="sampling")
  b = math.ceil(config.sampling.batch_size / mesh.size) * mesh.size
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      jnp.zeros((1, *shape)),
      jnp.zeros((1,)),
      jnp.zeros((1,), jnp.int32),
      train=False,
    )["params"]
  )
  rep, dat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  p_shard = (
    sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
    if params_sharded
    else jax.tree.map(lambda _: rep, abstract)
  )

  def step(params, z, labels, w, t):
    logsnrs = cfg.logsnrs()
    x, eps, _ = sampling.denoise_step(
      sampling.unet_eps_fn(model.apply, params),
      z=z,
      logsnr=logsnrs[t],
      labels=labels,
      w=w,
      null_label=config.data.num_classes,
      config=cfg,
      method=method,
      step=t,
      keys=jax.random.split(jax.random.key(0), z.shape[0]),
      state=method.init_state(z),
    )
    return sampling.ddim_step(x=x, eps=eps, logsnr=logsnrs[t], logsnr_next=logsnrs[t + 1], eta=0.0)

  fn = jax.jit(step, in_shardings=(p_shard, dat, dat, dat, rep), out_shardings=dat)
  args = (
    jax.tree.map(_spec, abstract, p_shard),
    jax.ShapeDtypeStruct((b, *shape), jnp.float32, sharding=dat),
    jax.ShapeDtypeStruct((b,), jnp.int32, sharding=dat),
    jax.ShapeDtypeStruct((b,), jnp.float32, sharding=dat),
    jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
  )
  return Program(fn, args, b)


def feature_program(config, mesh: Mesh) -> Program:
  """The evaluation's Inception feature step (images at the dataset's size, resized to 299 in
  the graph) at its accelerator batch size, split over every chip, params replicated."""
  from flax import traverse_util

  bs = features_lib.feature_batch_size(config, backend="tpu")
  b = math.ceil(bs / mesh.size) * mesh.size
  rep, dat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  shapes = inception.param_shapes()
  params = traverse_util.unflatten_dict(
    {
      tuple(k.split("/")): jax.ShapeDtypeStruct(s, jnp.float32, sharding=rep)
      for k, s in shapes.items()
    }
  )
  x = jax.ShapeDtypeStruct((b, *models.image_shape(config)), jnp.float32, sharding=dat)
  fn = jax.jit(features_lib.inception_outputs, in_shardings=(rep, dat), out_shardings=dat)
  return Program(fn, (params, x), b)


def logical_bytes_per_chip(args: Any) -> int:
  """Bytes of one chip's shards of `args` (sharded ShapeDtypeStructs), without layout padding:
  the known answer the compiler's argument size is checked against (a PRNG key is 8 bytes)."""
  total = 0
  for x in jax.tree.leaves(args):
    shard = x.sharding.shard_shape(x.shape)
    itemsize = 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.dtype.itemsize
    total += math.prod(shard) * itemsize
  return total


def _oom_bytes(message: str) -> int | None:
  """The bytes a RESOURCE_EXHAUSTED compile asked for ('... (46.00G) exceeds available HBM')."""
  m = re.search(r"\(([\d.]+)([KMGT])\) exceeds", message) or re.search(
    r"Used ([\d.]+)([KMGT]) of", message
  )
  if not m:
    return None
  return int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)


def roofline(flops: float, bytes_accessed: float, chip: Chip) -> dict[str, float]:
  """ESTIMATE of one step on one chip: max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), and
  the fraction of the chip's peak that step time allows at most (the MFU ceiling)."""
  compute, memory = flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth
  seconds = max(compute, memory, 1e-12)
  return {
    "step_seconds": seconds,
    "bound": "compute" if compute >= memory else "memory",
    "mfu_ceiling": compute / seconds,
  }


def compile_report(program: Program, chip: Chip) -> dict[str, Any]:
  """Lowers and compiles `program` for the mesh's TPU devices; per-chip memory (the compiler's
  buffer assignment), FLOPs and bytes (its cost analysis) and the roofline estimate. A program
  the compiler rejects as out of memory gives fits=False with the compiler's own message."""
  out: dict[str, Any] = {
    "global_batch": program.batch,
    "logical_argument_bytes": logical_bytes_per_chip(program.args),
  }
  t0 = time.time()
  lowered = program.fn.lower(*program.args)
  out["lower_seconds"] = round(time.time() - t0, 1)
  t0 = time.time()
  try:
    compiled = lowered.compile()
  except Exception as e:  # jax's XlaRuntimeError; only RESOURCE_EXHAUSTED is expected
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    out.update(
      compile_seconds=round(time.time() - t0, 1),
      fits=False,
      total_bytes=_oom_bytes(str(e)),
      compiler_error=str(e).strip().splitlines()[0][:500],
    )
    return out
  out["compile_seconds"] = round(time.time() - t0, 1)
  m = compiled.memory_analysis()
  for field in ("argument", "output", "alias", "temp", "generated_code"):
    out[f"{field}_bytes"] = int(getattr(m, f"{field}_size_in_bytes"))
  out["total_bytes"] = (
    out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  )
  out["fits"] = out["total_bytes"] <= chip.hbm_bytes
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  out["flops"] = float(cost.get("flops", 0.0))
  out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  out["estimate"] = roofline(out["flops"], out["bytes_accessed"], chip)
  return out


def throughput(report: dict[str, Any], *, chips: int, num_steps: int, steps_per_image: int = 1):
  """ESTIMATES from the roofline step time: images/s per chip and for the slice (a sample takes
  `steps_per_image` sampler steps), and chip-hours for `num_steps` steps."""
  seconds = report["estimate"]["step_seconds"]
  per_slice = report["global_batch"] / (seconds * steps_per_image)
  return {
    "images_per_second_per_chip": per_slice / chips,
    "images_per_second": per_slice,
    "hours": num_steps * seconds / 3600,
    "chip_hours": num_steps * seconds * chips / 3600,
  }


@dataclasses.dataclass
class BatchSearch:
  """The per-chip train batches compiled and the largest that fits (0: not even batch 1)."""

  tried: list[int]
  best: int
  reports: dict[int, dict[str, Any]]


def search_batch(compile_fn, hbm_bytes: int) -> BatchSearch:
  """The largest per-chip batch b whose program fits: memory(b) = fixed + b · slope from the
  compiles at b = 1 and 2 (`compile_fn(b)` -> a compile_report), the prediction at HEADROOM of
  the HBM compiled to check it, then 10% steps down until one fits."""
  reports: dict[int, dict[str, Any]] = {}

  def fits(b: int) -> bool:
    if b not in reports:
      reports[b] = compile_fn(b)
    return bool(reports[b]["fits"])

  if not fits(1):
    return BatchSearch([1], 0, reports)
  if not fits(2):
    return BatchSearch([1, 2], 1, reports)
  m1, m2 = reports[1]["total_bytes"], reports[2]["total_bytes"]
  slope = max(m2 - m1, 1)
  b = max(2, int((HEADROOM * hbm_bytes - (m1 - slope)) // slope))
  while b > 2 and not fits(b):
    b = max(2, int(b * 0.9))
  return BatchSearch(list(reports), b, reports)
