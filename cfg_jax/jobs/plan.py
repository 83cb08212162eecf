"""`--mode=plan`: the config's train, sampling and Inception feature steps compiled ahead of time by
the TPU compiler for `plan.topology` (`planning.py`), on any host with libtpu; per-chip HBM, FLOPs
and roofline ESTIMATES on the console and in <workdir>/plan.json, written after each program. A
program that does not fit ends the run with one error naming the fields that would make it fit."""

from __future__ import annotations

import json
import math
import os

import ml_collections
from absl import logging

from cfg_jax import fileio, guidance, models, planning, validation
from cfg_jax.config_lib import ConfigError

GiB = planning.GiB


def check(config: ml_collections.ConfigDict) -> tuple[str, planning.Chip, int]:
  """(version, chip, chips) of the plan section; one ConfigError naming every bad field."""
  p, errors = config.plan, []
  version, chips = "", 0
  if not p.topology:
    errors.append("plan.topology is empty: name the slice, e.g. --config.plan.topology=v5e:16x16.")
  else:
    try:
      version, dims = planning.parse_topology(p.topology)
      chips = math.prod(dims) * max(int(p.num_slices), 1)
    except planning.PlanError as e:
      errors.append(str(e))
  if int(p.num_slices) < 1:
    errors.append(f"plan.num_slices must be >= 1, got {p.num_slices}.")
  unknown = [x for x in p.programs if x not in planning.PROGRAMS]
  if unknown or not p.programs:
    errors.append(
      f"plan.programs={tuple(p.programs)!r}: choose from {planning.PROGRAMS} "
      f"(unknown: {unknown or 'none given'})."
    )
  if "sample" in p.programs and guidance.from_config(config, section="sampling").networks(config):
    errors.append(
      f"plan.programs has 'sample', but sampling.guidance={config.sampling.guidance!r} samples "
      "with extra networks the plan does not build; plan with the default guidance "
      "(--config.sampling.guidance=cfg) or drop 'sample' from plan.programs."
    )
  if errors:
    raise ConfigError("\n".join(errors))
  return version, planning.CHIPS[version], chips


def programs(config: ml_collections.ConfigDict, mesh) -> dict[str, planning.Program]:
  """The programs plan.programs names, by the name they have in plan.json."""
  out = {}
  if "train" in config.plan.programs:
    out["train"] = planning.train_program(config, mesh)
  if "sample" in config.plan.programs:
    out["sample"] = planning.sample_program(config, mesh)
    if config.plan.sharded_params:
      out["sample (sharded params)"] = planning.sample_program(config, mesh, params_sharded=True)
  if "features" in config.plan.programs:
    out["features"] = planning.feature_program(config, mesh)
  return out


def estimates(name: str, report: dict, config: ml_collections.ConfigDict, chips: int) -> dict:
  """The throughput ESTIMATES of one program: train for num_train_steps, a sample takes
  sampling.num_steps steps, features one."""
  if name == "train":
    return planning.throughput(report, chips=chips, num_steps=config.training.num_train_steps)
  per_image = config.sampling.num_steps if name.startswith("sample") else 1
  return planning.throughput(report, chips=chips, num_steps=0, steps_per_image=per_image)


def _gib(x) -> str:
  return "—" if x is None else f"{x / GiB:.2f}"


def table(plan: dict) -> str:
  """The console view of plan.json: per chip, every figure from the compiler, then ESTIMATES."""
  chip, hbm = plan["chip"], plan["chip"]["hbm_bytes"]
  head = (
    f"TPU plan: {plan['topology']} x {plan['num_slices']} slice(s) = {plan['chips']} chips "
    f"({plan['version']}, {_gib(hbm)} GiB HBM, {chip['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
    f"{chip['hbm_bandwidth'] / 1e9:.0f} GB/s; {chip['source']}), mesh data={plan['mesh']['data']} "
    f"x fsdp={plan['mesh']['fsdp']}, {plan['model']['params']:,} params "
    f"({plan['model']['name']}, {plan['model']['dtype']}, remat={plan['model']['remat']})"
  )
  rows = [
    head,
    "",
    "per chip, GiB (compiler)   | batch/chip | argument | output | alias |   temp |  total | "
    "of HBM | fits | GFLOP | GB moved | compile s",
  ]
  for name, r in plan["programs"].items():
    fields = [_gib(r.get(f"{k}_bytes")) for k in ("argument", "output", "alias", "temp", "total")]
    share = f"{100 * r['total_bytes'] / hbm:.0f}%" if r.get("total_bytes") else "—"
    flops = f"{r['flops'] / 1e9:.1f}" if "flops" in r else "—"
    moved = f"{r['bytes_accessed'] / 1e9:.2f}" if "bytes_accessed" in r else "—"
    rows.append(
      f"{name:<26} | {r['global_batch'] // plan['chips']:>10} | "
      + " | ".join(f"{f:>6}" for f in fields)
      + f" | {share:>6} | {'yes' if r['fits'] else 'NO':>4} | {flops:>5} | {moved:>8} | "
      f"{r['compile_seconds']:>9}"
    )
  rows += [
    "",
    "ESTIMATES (roofline: step = max(FLOPs / peak, bytes / HBM bandwidth); real steps are slower)",
    "program                    | step ms | bound   | MFU ceiling | img/s/chip | img/s slice | "
    "chip-hours",
  ]
  for name, r in plan["programs"].items():
    if "estimate" not in r:
      rows.append(f"{name:<26} | (does not fit: {r.get('compiler_error', 'over HBM')[:80]})")
      continue
    e, t = r["estimate"], r["throughput"]
    hours = f"{t['chip_hours']:,.0f}" if name == "train" else "—"
    rows.append(
      f"{name:<26} | {1e3 * e['step_seconds']:7.2f} | {e['bound']:<7} | "
      f"{e['mfu_ceiling']:11.2f} | {t['images_per_second_per_chip']:10.1f} | "
      f"{t['images_per_second']:11.0f} | {hours:>10}"
    )
  if "train" in plan["programs"] and "throughput" in plan["programs"]["train"]:
    t = plan["programs"]["train"]["throughput"]
    rows.append(
      f"train for {plan['num_train_steps']:,} steps: ESTIMATE {t['hours']:.1f} h on the slice, "
      f"{t['chip_hours']:,.0f} chip-hours (a lower bound: roofline, no input pipeline)"
    )
  if plan.get("batch_search"):
    s = plan["batch_search"]
    rows.append(f"largest train batch per chip that fits: {s['best']} (compiled {s['tried']})")
  return "\n".join(rows)


def not_fitting_message(plan: dict, config: ml_collections.ConfigDict) -> str:
  """One block: each program that does not fit, the chip's HBM, the bytes asked, and the fields
  that would make it fit."""
  hbm, lines = plan["chip"]["hbm_bytes"], []
  m = config.model
  for name, r in plan["programs"].items():
    if r["fits"]:
      continue
    asked = f"{_gib(r['total_bytes'])} GiB" if r.get("total_bytes") else "more than that"
    lines.append(
      f"{name} does not fit a {plan['version']} chip's {_gib(hbm)} GiB of HBM on "
      f"{plan['topology']}: it asks {asked} per chip"
      + (f" (the compiler: {r['compiler_error']})" if r.get("compiler_error") else "")
      + "."
    )
    per_chip = r["global_batch"] // plan["chips"]
    if name == "train":
      lines.append(
        f"  - a smaller per-chip batch ({per_chip} now): --config.training.batch_size="
        f"{max(per_chip // 2, 1) * plan['chips']}, or --config.plan.search_batch=true to find "
        "the largest that fits"
      )
      if plan["mesh"]["fsdp"] == 1:
        lines.append(
          "  - shard params, EMA and Adam state over chips: --config.mesh.fsdp=8 (or 4, 16)"
        )
      if not m.remat:
        lines.append("  - recompute activations in the backward pass: --config.model.remat=true")
    elif name.startswith("sample"):
      lines.append(
        f"  - a smaller sampler batch ({per_chip} per chip now): --config.sampling.batch_size="
        f"{max(per_chip // 2, 1) * plan['chips']}"
      )
    else:
      lines.append(
        f"  - a smaller feature batch: --config.evaluation.feature_batch_size="
        f"{max(r['global_batch'] // 2, 1)}"
      )
    if m.dtype == "float32" and name != "features":
      lines.append("  - compute in bfloat16 (params stay float32): --config.model.dtype=bfloat16")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Compiles every program of plan.programs for the slice; returns the plan (plan.json)."""
  version, chip, chips = check(config)
  validation.validate(config, num_devices=chips)  # before any compile
  devices = planning.topology_devices(config.plan.topology, int(config.plan.num_slices))
  mesh = planning.make_mesh(devices, int(config.mesh.fsdp))
  plan = {
    "topology": config.plan.topology,
    "num_slices": int(config.plan.num_slices),
    "version": version,
    "chips": chips,
    "chip": chip._asdict(),
    "mesh": dict(mesh.shape),
    "model": {
      "name": config.model.name,
      "dtype": config.model.dtype,
      "remat": bool(config.model.remat),
      "params": models.count_params(models.create_model(config), models.image_shape(config)),
    },
    "num_train_steps": int(config.training.num_train_steps),
    "note": "memory, FLOPs and bytes: the TPU compiler's (memory_analysis, cost_analysis), per "
    "chip; step times, images/s and chip-hours: ESTIMATES from the roofline",
    "programs": {},
  }
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "plan.json")

  def save():
    text = json.dumps(plan, indent=1).encode()
    fileio.write_atomic(path, lambda f: f.write(text))

  for name, program in programs(config, mesh).items():
    logging.info("plan: compiling %s for %s (%d chips) ...", name, config.plan.topology, chips)
    report = planning.compile_report(program, chip)
    if "estimate" in report:
      report["throughput"] = estimates(name, report, config, chips)
    plan["programs"][name] = report
    logging.info("plan: %s compiled in %.0f s", name, report["compile_seconds"])
    save()
  if config.plan.search_batch:
    compile_at = lambda b: planning.compile_report(
      planning.train_program(config, mesh, batch_per_chip=b), chip
    )
    s = planning.search_batch(compile_at, chip.hbm_bytes)
    plan["batch_search"] = {
      "tried": s.tried,
      "best": s.best,
      "total_bytes": {b: r.get("total_bytes") for b, r in s.reports.items()},
    }
    save()
  print(table(plan), flush=True)
  logging.info("plan: wrote %s", path)
  if not all(r["fits"] for r in plan["programs"].values()):
    raise planning.PlanError(not_fitting_message(plan, config))
  return plan
