"""Memory plan of the paper's ImageNet models: the train step compiled ahead of time from shapes.

    python -m benchmarks.memory_plan            # writes benchmarks/results/memory_plan.md
    python -m benchmarks.memory_plan --quick    # imagenet64 only (5 compiles instead of 8)

For `configs/imagenet64.py` and `configs/imagenet128.py` this builds the real train step
(`training.make_train_step`: the (data, fsdp) mesh, state shardings, donation) on fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=64, set here before jax is imported), with the
state from `jax.eval_shape` and inputs as `jax.ShapeDtypeStruct`s with shardings, then
`.lower(...).compile()` — nothing is allocated. From `compiled.memory_analysis()` it reports per
device: arguments, outputs, the part of the outputs aliased to donated arguments, temporaries,
generated code, and their total (argument + output - alias + temp).

Per-device memory is about affine in the per-device batch b (the state is fixed, activations
grow with b): memory(b) = fixed + b * per_example, fitted from compiles at b = 2 and 4 on the
same mesh; a compile at the paper's batch size checks the fit. The largest b for a device of
M GiB keeps 10% of it free. Because XLA:CPU's schedule does not realise rematerialisation, the
activations that the forward pass saves for the backward pass are also measured directly
(jax.vjp residuals under jax.eval_shape) for float32/bfloat16 with and without remat.

The compiles are CPU-XLA compiles: buffer assignment on TPU/GPU differs (other fusions, layouts
and collective buffers; XLA:CPU may compute bfloat16 ops in float32), so the figures are a plan
to check with `memory_analysis()` on the real devices, not a guarantee. LLVM optimisation is
turned down (--xla_backend_optimization_level=0), which speeds the compiles up and leaves buffer
assignment unchanged (the same bytes were measured with and without it). Each big compile takes
2-6 min on 2 shared CPU cores. Results are cached in benchmarks/results/memory_plan.json (a
compile is reused when its case is there; --fresh recompiles).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

from benchmarks.common import REPO

RESULTS = os.path.join(REPO, "benchmarks", "results")
MAX_DEVICES = 64
GiB = 2**30
BUDGETS_GIB = (16, 32, 80)
HEADROOM = 0.10
# guided-diffusion's create_model with its README flags, 3 output channels, without the ∅ row.
ADM_REFERENCE = {"imagenet64": 295_899_267, "imagenet128": 421_522_691}
VARIANTS = {  # name: (model.dtype, model.remat)
  "f32": ("float32", False),
  "f32+remat": ("float32", True),
  "bf16": ("bfloat16", False),
  "bf16+remat": ("bfloat16", True),
}
FIT_BATCHES = (2, 4)  # per-device batches of the affine fit (data parallel, 8 devices)
PAPER = {"imagenet64": 2048, "imagenet128": 256}  # ADM's global batch sizes, used by the paper


def grid(quick: bool) -> list[dict]:
  """The compiles: (config, variant, devices, fsdp, per-device batch, purpose). Each big U-Net
  compile takes 2-4 min on 2 shared CPU cores, which bounds this grid to ~30 min."""
  cases = []
  for name in ("imagenet64",) if quick else ("imagenet64", "imagenet128"):
    variants = ("f32", "bf16+remat") if name == "imagenet64" else ("f32",)
    for v in variants:
      for b in FIT_BATCHES:
        cases.append(dict(config=name, variant=v, devices=8, fsdp=1, b=b, purpose="fit"))
    cases.append(
      dict(
        config=name,
        variant=variants[-1],
        devices=8,
        fsdp=8,
        b=PAPER[name] // 8,
        purpose="paper batch",
      )
    )
  return cases


def saved_activations_per_example(name: str, variant: str) -> int:
  """Bytes the forward pass keeps for the backward pass per example: the residuals of jax.vjp of
  the loss at batch 2 minus batch 1, from jax.eval_shape (no compile). Independent of XLA's
  schedule, this is what remat and bfloat16 shrink."""
  import jax
  import jax.numpy as jnp

  from cfg_jax import config_lib, models

  config = config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"))
  with config.unlocked():
    config.model.dtype, config.model.remat = VARIANTS[variant]
  model = models.create_model(config)
  h = config.data.image_size

  def residual_bytes(b: int) -> int:
    def residuals(z, logsnr, labels):
      params = model.init(jax.random.key(0), z, logsnr, labels, train=False)["params"]
      loss = lambda p: jnp.mean(
        model.apply(
          {"params": p}, z, logsnr, labels, train=True, rngs={"dropout": jax.random.key(1)}
        )
        ** 2
      )
      return jax.tree.leaves(jax.vjp(loss, params)[1])

    leaves = jax.eval_shape(
      residuals,
      jax.ShapeDtypeStruct((b, h, h, 3), jnp.float32),
      jax.ShapeDtypeStruct((b,), jnp.float32),
      jax.ShapeDtypeStruct((b,), jnp.int32),
    )
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)

  return residual_bytes(2) - residual_bytes(1)


def key(case: dict) -> str:
  return "{config}/{variant}/{devices}x{fsdp}/b{b}".format(**case)


def measure(case: dict) -> dict:
  """Compiles the train step of `case` from abstract shapes and returns its memory analysis."""
  import functools

  import jax
  import jax.numpy as jnp

  from cfg_jax import config_lib, models, sharding, train_state, training, validation

  config = config_lib.load_config(os.path.join(REPO, "configs", f"{case['config']}.py"))
  dtype, remat = VARIANTS[case["variant"]]
  n, b = case["devices"], case["b"]
  with config.unlocked():
    config.model.dtype, config.model.remat = dtype, remat
    config.mesh.fsdp = case["fsdp"]
    config.training.batch_size = n * b
  validation.validate(config, num_devices=n)
  mesh = sharding.make_mesh_from_config(config, num_devices=n)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  shape = (config.data.image_size, config.data.image_size, 3)
  init = functools.partial(train_state.init_state, model=model, tx=tx, shape=shape)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  dat = sharding.batch_sharded(mesh)
  batch = {
    "image": jax.ShapeDtypeStruct((n * b, *shape), jnp.float32, sharding=dat),
    "label": jax.ShapeDtypeStruct((n * b,), jnp.int32, sharding=dat),
  }
  key_shape = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype, sharding=sharding.replicated(mesh))
  step = training.make_train_step(model, tx, config, mesh, shardings)
  t0 = time.time()
  compiled = step.lower(state, batch, rng).compile()
  seconds = time.time() - t0
  m = compiled.memory_analysis()
  params = abstract.params
  sharded = sum(
    math.prod(x.shape)
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings.params))
    if not s.is_fully_replicated
  )
  out = dict(
    case,
    compile_seconds=round(seconds, 1),
    params=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
    params_sharded=sharded,
  )
  for field in ("argument", "output", "alias", "temp", "generated_code"):
    out[field] = int(getattr(m, f"{field}_size_in_bytes"))
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def fit(points: list[dict]) -> tuple[float, float]:
  """(fixed bytes, bytes per example) of the line through two measurements."""
  (p1, p2) = sorted(points, key=lambda p: p["b"])[:2]
  slope = (p2["total"] - p1["total"]) / (p2["b"] - p1["b"])
  return p1["total"] - slope * p1["b"], slope


def max_batch(fixed: float, slope: float, budget_gib: float) -> int:
  usable = (1 - HEADROOM) * budget_gib * GiB
  return max(0, int((usable - fixed) // slope))


def gib(x: float) -> str:
  return f"{x / GiB:.2f}"


def report(results: dict[str, dict], saved: dict[str, int], command: str) -> str:
  rows = list(results.values())
  configs = [c for c in ("imagenet64", "imagenet128") if any(r["config"] == c for r in rows)]
  total_min = sum(r["compile_seconds"] for r in rows) / 60
  lines = [
    "# Memory plan: the paper's ImageNet train steps, compiled from shapes",
    "",
    f"`{command}` on {platform.machine()} with {os.cpu_count()} shared CPU cores: "
    f"{len(rows)} compiles on {MAX_DEVICES} fake CPU devices, {total_min:.0f} min of "
    f"compiling ({min(r['compile_seconds'] for r in rows):.0f}–"
    f"{max(r['compile_seconds'] for r in rows):.0f} s each); nothing is allocated.",
    "",
    "Everything is per device, in GiB (2^30 bytes). The train step is cfg_jax's own "
    "(`training.make_train_step`): Adam, EMA, global-norm clipping, donated state. "
    "`total` = argument + output − alias + temp; with the state donated the outputs alias "
    "the arguments, so total ≈ state + temporaries (activations, gradients, gathered "
    "fsdp weights).",
    "",
    "**Caveat.** These are XLA:CPU buffer assignments. TPU/GPU compiles differ (fusions, "
    "layouts, collective buffers, and memory-aware schedulers). In particular XLA:CPU's "
    "schedule does not realise rematerialisation (the remat compiles keep almost the "
    "same temporaries) and keeps much of the bfloat16 work in float32, so the CPU "
    "figures for remat/bfloat16 are pessimistic. The `saved activations` column measures "
    "what remat and bfloat16 change independently of any schedule. Check with "
    "`jit(...).lower(...).compile().memory_analysis()` on the real devices before a "
    "long run.",
    "",
  ]
  lines += [
    "## Parameters",
    "",
    "| config | parameters | ADM published (no ∅ row) | + ∅ row (4·ch) | match |",
    "|---|---:|---:|---:|---|",
  ]
  from cfg_jax import config_lib

  for name in configs:
    r = next(r for r in rows if r["config"] == name)
    ch = config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py")).model.ch
    expected = ADM_REFERENCE[name] + 4 * ch
    lines.append(
      f"| `{name}` | {r['params']:,} | {ADM_REFERENCE[name]:,} | {expected:,} | "
      f"{'yes' if r['params'] == expected else 'NO'} |"
    )
  lines += [
    "",
    "## Compiles",
    "",
    "| config | options | mesh (data×fsdp) | batch / device | argument | output | alias | "
    "temp | code | total | fsdp-sharded params | compile s |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['config']} | {r['variant']} | {r['devices'] // r['fsdp']}×{r['fsdp']} | {r['b']} | "
      f"{gib(r['argument'])} | {gib(r['output'])} | {gib(r['alias'])} | {gib(r['temp'])} | "
      f"{gib(r['generated_code'])} | **{gib(r['total'])}** | "
      f"{100 * r['params_sharded'] / r['params']:.1f}% | {r['compile_seconds']:.0f} |"
    )
  lines += [
    "",
    "## Saved activations per example (jax.vjp residuals, no compile)",
    "",
    "| config | " + " | ".join(VARIANTS) + " |",
    "|---|" + "---:|" * len(VARIANTS),
  ]
  for name in configs:
    lines.append(
      f"| {name} | "
      + " | ".join(f"{saved[f'{name}/{v}'] / 2**20:.0f} MiB" for v in VARIANTS)
      + " |"
    )
  lines += [
    "",
    "## Largest per-device batch",
    "",
    f"memory(b) = fixed + b · per-example. `CPU fit`: the line through the data-parallel "
    f"compiles at b = {FIT_BATCHES} (8 devices). `saved-activation model`: the f32 CPU "
    "fit's fixed part + b · saved activations of the option (it leaves out the backward "
    "pass's transient buffers, and XLA may fuse some residuals away: for f32 the CPU "
    "fit's slope is below it). fsdp rows subtract the state that fsdp "
    "moves off the device (argument bytes · (1 − 1/fsdp)) from the fixed part. `max b` "
    f"keeps {HEADROOM:.0%} of the device free; `devices for the paper batch` = "
    "⌈paper batch / max b at 80 GiB⌉.",
    "",
    "| config | options | fsdp | model | fixed | per example | max b @16 GiB | @32 GiB | "
    "@80 GiB | devices for the paper batch @80 GiB |",
    "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name in configs:
    fits = {}
    for v in VARIANTS:
      pts = [
        r
        for r in rows
        if r["config"] == name
        and r["variant"] == v
        and r["fsdp"] == 1
        and r["devices"] == 8
        and r["b"] in FIT_BATCHES
      ]
      if len(pts) >= 2:
        fits[v] = (fit(pts), pts[0]["argument"])
    if "f32" not in fits:
      continue
    (base_fixed, _), arg = fits["f32"]
    models = [(v, "CPU fit", fx, s) for v, ((fx, s), _) in fits.items()]
    models += [(v, "saved-activation model", base_fixed, saved[f"{name}/{v}"]) for v in VARIANTS]
    for v, kind, fx, slope in models:
      for f in (1, 8):
        fxf = fx - arg * (1 - 1 / f)
        mb = [max_batch(fxf, slope, m) for m in BUDGETS_GIB]
        need = math.ceil(PAPER[name] / mb[-1]) if mb[-1] else "—"
        lines.append(
          f"| {name} | {v} | {f} | {kind} | {gib(fxf)} | {gib(slope)} | "
          + " | ".join(map(str, mb))
          + f" | {need} |"
        )
  checks = [r for r in rows if r["purpose"] == "paper batch"]
  if checks:
    lines += ["", "## Check at the paper's batch size", ""]
    for r in checks:
      pts = [
        p
        for p in rows
        if p["config"] == r["config"]
        and p["variant"] == r["variant"]
        and p["fsdp"] == 1
        and p["devices"] == 8
        and p["b"] in FIT_BATCHES
      ]
      (fx, s) = fit(pts)
      arg1 = pts[0]["argument"]
      pred = fx - (arg1 - r["argument"]) + s * r["b"]
      lines.append(
        f"- {r['config']} {r['variant']} on {r['devices'] // r['fsdp']}×{r['fsdp']} "
        f"at {r['b']} per device (global {r['b'] * r['devices']}): compiled "
        f"{gib(r['total'])} GiB, the CPU fit predicts {gib(pred)} GiB "
        f"({100 * (r['total'] / pred - 1):+.0f}%): XLA:CPU's temporaries grow faster "
        "than linearly at large batches, so use the fits for small per-device "
        "batches and re-measure on the target devices."
      )
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="imagenet64 only, 2 options, 5 compiles")
  parser.add_argument("--fresh", action="store_true", help="ignore cached compiles")
  parser.add_argument("--out", default=os.path.join(RESULTS, "memory_plan.md"))
  args = parser.parse_args()
  if "jax" in sys.modules:
    raise RuntimeError("memory_plan must set XLA_FLAGS before jax is imported.")
  os.environ["XLA_FLAGS"] = " ".join(
    [
      os.environ.get("XLA_FLAGS", ""),
      f"--xla_force_host_platform_device_count={MAX_DEVICES}",
      "--xla_backend_optimization_level=0",
      "--xla_llvm_disable_expensive_passes=true",
    ]
  )
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

  cache_path = os.path.join(RESULTS, "memory_plan.json")
  cache = {}
  if os.path.exists(cache_path) and not args.fresh:
    with open(cache_path) as f:
      cache = json.load(f)
  results = {}
  for case in grid(args.quick):
    k = key(case)
    if k not in cache:
      print(f"compiling {k} ...", flush=True)
      cache[k] = measure(case)
      print(
        f"  total {gib(cache[k]['total'])} GiB, compile {cache[k]['compile_seconds']} s", flush=True
      )
      os.makedirs(RESULTS, exist_ok=True)
      with open(cache_path + ".tmp", "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
      os.replace(cache_path + ".tmp", cache_path)
    results[k] = cache[k]
  saved = {}
  for name in sorted({r["config"] for r in results.values()}):
    for v in VARIANTS:
      k = f"saved/{name}/{v}"
      if k not in cache:
        cache[k] = saved_activations_per_example(name, v)
      saved[f"{name}/{v}"] = cache[k]
  with open(cache_path, "w") as f:
    json.dump(cache, f, indent=1, sort_keys=True)
  command = "python -m benchmarks.memory_plan" + (" --quick" if args.quick else "")
  text = report(results, saved, command)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
