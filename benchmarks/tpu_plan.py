"""The paper's configs planned for TPU slices with the TPU compiler (--mode=plan), beside the CPU
memory plan of the same step.

    python -m benchmarks.tpu_plan                    # every case of GRID not yet in the cache
    python -m benchmarks.tpu_plan --cases in64-v5e256-bf16-train,cifar10-v5e16-f32-train
    python -m benchmarks.tpu_plan --report_only      # rewrite the markdown from the cache

Each case is one run of the real CLI (`python -m cfg_jax.main --mode=plan`) in a fresh process;
its plan.json is stored in benchmarks/results/tpu_plan.json as soon as it finishes (a rerun skips
cached cases; --fresh redoes them). The short table of the README and docs/scaling.md is written
from the same cache. A big U-Net compiles for tens of minutes on 2 shared CPU
cores, so cases run in GRID order, most important first, until --budget_minutes is spent; the
report lists the cases not compiled. Writes benchmarks/results/tpu_plan.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common

GiB = 2**30
VARIANTS = {
  "f32": ("float32", False),
  "bf16": ("bfloat16", False),
  "bf16+remat": ("bfloat16", True),
}
# (case, config, topology, variant, programs, extra overrides); the paper's batch sizes.
GRID = [
  ("in64-v5e256-bf16-train", "imagenet64", "v5e:16x16", "bf16", ("train",), ()),
  ("in64-v5e256-f32-train", "imagenet64", "v5e:16x16", "f32", ("train",), ()),
  (
    "in64-v5e256-bf16-sample-features",
    "imagenet64",
    "v5e:16x16",
    "bf16",
    ("sample", "features"),
    (),
  ),
  ("cifar10-v5e16-f32-train", "cifar10", "v5e:4x4", "f32", ("train",), ()),
  ("in64-v5e256-bf16+remat-train", "imagenet64", "v5e:16x16", "bf16+remat", ("train",), ()),
  ("in128-v5e256-bf16-train", "imagenet128", "v5e:16x16", "bf16", ("train",), ()),
  ("in64-v5p64-bf16-train", "imagenet64", "v5p:4x4x4", "bf16", ("train",), ()),
  ("in64-v4-32-bf16-train", "imagenet64", "v4:2x2x8", "bf16", ("train",), ()),
]
CACHE = os.path.join(common.RESULTS, "tpu_plan.json")
WORKDIRS = os.path.join(common.REPO, "runs", "tpu_plan")


def command(case) -> list[str]:
  name, config, topology, variant, programs, extra = case
  dtype, remat = VARIANTS[variant]
  return [
    sys.executable,
    "-m",
    "cfg_jax.main",
    f"--config=configs/{config}.py",
    "--mode=plan",
    f"--workdir={os.path.join(WORKDIRS, name)}",
    f"--config.plan.topology={topology}",
    f"--config.plan.programs={tuple(programs)!r}",
    f"--config.model.dtype={dtype}",
    f"--config.model.remat={remat}",
    *extra,
  ]


def run_case(case) -> dict:
  """One CLI run; its plan.json (also when a program does not fit: exit 1 with the plan saved).
  A complete plan.json already in the case's workdir (the same command run by hand) is taken as
  it is, its wall time then the sum of its lower and compile times."""
  path = os.path.join(WORKDIRS, case[0], "plan.json")
  if os.path.exists(path):
    with open(path) as f:
      plan = json.load(f)
    if set(case[4]) <= set(plan["programs"]):
      seconds = sum(r["lower_seconds"] + r["compile_seconds"] for r in plan["programs"].values())
      fits = all(r["fits"] for r in plan["programs"].values())
      cmd = " ".join(["python", *command(case)[1:]]).replace(common.REPO + "/", "")
      return dict(plan, wall_seconds=seconds, exit_status=0 if fits else 1, command=cmd,
                  load_average=[float("nan")] * 3)  # fmt: skip
  t0 = time.time()
  proc = subprocess.run(
    command(case),
    cwd=common.REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
  )
  if not os.path.exists(path):
    raise RuntimeError(f"{case[0]}: no plan.json (exit {proc.returncode})\n{proc.stderr[-3000:]}")
  with open(path) as f:
    plan = json.load(f)
  plan["wall_seconds"] = round(time.time() - t0, 1)
  plan["exit_status"] = proc.returncode
  plan["load_average"] = os.getloadavg()
  plan["command"] = " ".join(["python", *command(case)[1:]]).replace(common.REPO + "/", "")
  return plan


def cpu_plan_gib(config: str, variant: str, per_chip: int) -> str:
  """The CPU memory plan's (benchmarks/memory_plan.py) total per device at this per-chip batch:
  its affine fit through the data-parallel compiles at b = 2 and 4, where it has that variant."""
  try:
    with open(os.path.join(common.RESULTS, "memory_plan.json")) as f:
      cpu = json.load(f)
  except OSError:
    return "—"
  pts = [cpu.get(f"{config}/{variant}/8x1/b{b}") for b in (2, 4)]
  if None in pts:
    return "—"
  slope = (pts[1]["total"] - pts[0]["total"]) / 2
  return f"{(pts[0]['total'] + slope * (per_chip - 2)) / GiB:.2f}"


def _gib(x) -> str:
  return "—" if x is None else f"{x / GiB:.2f}"


def report(cache: dict, wall_minutes: float | None) -> str:
  lines = [
    "# TPU plan: the paper's configs compiled by the TPU compiler",
    "",
    "`python -m benchmarks.tpu_plan` on " + common.machine() + " (when the report was "
    "written; each compile's own load is in its command line below): each case is "
    "`python -m cfg_jax.main --mode=plan` (its command below), the programs compiled by libtpu "
    "for compile-only devices of the named slice from shapes only. Memory, FLOPs and bytes are "
    "the TPU compiler's, per chip (its buffer assignment: `memory_analysis()`, and "
    "`cost_analysis()`). **Step times, images/s, MFU ceilings and chip-hours are ESTIMATES**: "
    "a roofline, max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), with the chip figures "
    "of `cfg_jax/planning.py` (Google Cloud's TPU pages); a real step is slower (collectives "
    "over ICI, the input pipeline, the roofline's overlap assumption).",
    "",
  ]
  if wall_minutes is not None:
    lines += [f"Wall time of this run: {wall_minutes:.0f} min (cached cases not recompiled).", ""]
  lines += [
    "| case | program | chips | batch/chip | argument | temp | total GiB | of HBM | fits | "
    "CPU plan GiB | GFLOP/chip | est. step ms | bound | est. MFU ceiling | est. img/s (slice) | "
    "est. chip-hours | compile s |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|",
  ]
  missing = []
  for case in GRID:
    name, config, _, variant = case[:4]
    plan = cache.get(name)
    if plan is None:
      missing.append(name)
      continue
    hbm = plan["chip"]["hbm_bytes"]
    for prog, r in plan["programs"].items():
      per_chip = r["global_batch"] // plan["chips"]
      cpu = cpu_plan_gib(config, variant, per_chip) if prog == "train" else "—"
      share = f"{100 * r['total_bytes'] / hbm:.0f}%" if r.get("total_bytes") else "—"
      if "estimate" in r:
        e, t = r["estimate"], r["throughput"]
        est = (
          f"{r['flops'] / 1e9:.0f} | {1e3 * e['step_seconds']:.1f} | {e['bound']} | "
          f"{e['mfu_ceiling']:.2f} | {t['images_per_second']:,.0f} | "
          + (f"{t['chip_hours']:,.0f}" if prog == "train" else "—")
        )
      else:
        est = "— | — | — | — | — | —"
      lines.append(
        f"| {name} | {prog} | {plan['chips']} | {per_chip} | {_gib(r.get('argument_bytes'))} | "
        f"{_gib(r.get('temp_bytes'))} | **{_gib(r.get('total_bytes'))}** | {share} | "
        f"{'yes' if r['fits'] else 'NO'} | {cpu} | {est} | {r['compile_seconds']:.0f} |"
      )
  lines += ["", "## Commands", ""]
  for case in GRID:
    if case[0] in cache:
      p = cache[case[0]]
      load = p["load_average"][0]
      load = "not recorded (run by hand)" if load != load else f"{load:.1f}"  # NaN: adopted
      lines.append(
        f"- `{case[0]}`: `{p['command']}` — {p['wall_seconds'] / 60:.1f} min wall, load "
        f"average {load}, exit {p['exit_status']}"
      )
  errors = [
    f"- `{n}` {prog}: {r['compiler_error']}"
    for n, p in cache.items()
    for prog, r in p["programs"].items()
    if r.get("compiler_error")
  ]
  if errors:
    lines += ["", "## The compiler's out-of-memory messages", "", *errors]
  if missing:
    lines += ["", "Not compiled in this run's budget: " + ", ".join(f"`{m}`" for m in missing)]
  return "\n".join(lines) + "\n"


def short_table(cache: dict) -> str:
  """The README's and docs/scaling.md's table: one row per compiled program of each case."""
  lines = [
    "| config, slice, dtype | program | batch/chip | HBM per chip (compiler) | fits | "
    "est. img/s (slice) | est. chip-hours, all steps |",
    "|---|---|---:|---:|---|---:|---:|",
  ]
  for case in GRID:
    name, config, topology, variant = case[:4]
    plan = cache.get(name)
    for prog, r in (plan or {}).get("programs", {}).items():
      total = r.get("total_bytes")
      hbm = plan["chip"]["hbm_bytes"]
      used = "—" if total is None else f"{total / GiB:.2f} GiB ({100 * total / hbm:.0f}%)"
      t = r.get("throughput")
      img = f"{t['images_per_second']:,.0f}" if t else "—"
      hours = f"{t['chip_hours']:,.0f}" if t and prog == "train" else "—"
      lines.append(
        f"| {config}, {topology} ({plan['chips']} chips), {variant} | {prog} | "
        f"{r['global_batch'] // plan['chips']} | {used} | {'yes' if r['fits'] else 'NO'} | "
        f"{img} | {hours} |"
      )
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default="", help="comma-separated case names (default: GRID)")
  parser.add_argument("--budget_minutes", type=float, default=240.0)
  parser.add_argument("--fresh", action="store_true", help="recompile cached cases")
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  cache = {}
  if os.path.exists(CACHE):
    with open(CACHE) as f:
      cache = json.load(f)
  t0, wall = time.time(), None
  if not args.report_only:
    wanted = set(args.cases.split(",")) if args.cases else {c[0] for c in GRID}
    for case in GRID:
      if case[0] not in wanted or (case[0] in cache and not args.fresh):
        continue
      if time.time() - t0 > 60 * args.budget_minutes:
        print(f"budget spent: {case[0]} not compiled", flush=True)
        continue
      print(f"planning {case[0]} ...", flush=True)
      cache[case[0]] = run_case(case)
      os.makedirs(common.RESULTS, exist_ok=True)
      with open(CACHE, "w") as f:  # the cache after every case
        json.dump(cache, f, indent=1, sort_keys=True)
    wall = (time.time() - t0) / 60
  text = report(cache, wall)
  with open(os.path.join(common.RESULTS, "tpu_plan.md"), "w") as f:
    f.write(text)
  for doc in ("README.md", os.path.join("docs", "scaling.md")):
    common.splice(os.path.join(common.REPO, doc), "tpu-plan-table", short_table(cache))
  print(text)


if __name__ == "__main__":
  main()
