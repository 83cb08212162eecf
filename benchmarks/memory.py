"""Peak memory of every mode: each run of the real CLI in a fresh process, its peak RSS and wall time.

    python -m benchmarks.memory                         # digits and mnist, every mode
    python -m benchmarks.memory --datasets digits       # one dataset
    python -m benchmarks.memory --readme_evaluate       # also a whole digits evaluate sweep

For each embedded dataset it trains a model, then runs --mode=sample, evaluate (without and with
the FID Inception), likelihood, distill and train_classifier on it, each with the config's
defaults for everything that sets memory (model, batch sizes, sampler batch, Inception feature
batch, likelihood batch: the `memory set by` column) and a shorter run where the length does not
(fewer steps, w values, samples or images: the `overrides` column). Every evaluate run starts
from an empty `eval/` (its reference statistics included), as the first evaluate after training
does. The peak is the child's own `ru_maxrss` (os.wait4), i.e. measured resident memory, not
XLA's memory_analysis (which leaves out the CPU runtime's convolution scratch). The Inception
runs need the weights (`make fid-weights`); without them they are listed as not run, and their
results rows must name the Inception weights (`fid_net`) to count. Writes
benchmarks/results/memory.{md,json} and the tables of docs/memory.md and the README; a rerun reuses the cached runs of the same weights
(--fresh to redo).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common

GiB = 2**30
# (mode, case name, uses Inception, overrides that shorten the run without changing what sets
# its memory)
CASES = [
  ("train", "train", False, ["--config.training.num_train_steps=200"]),
  ("sample", "sample", False, []),
  (
    "evaluate",
    "evaluate (dataset classifier)",
    False,
    ["--config.evaluation.inception_weights=none", "--config.evaluation.w_values=(0.,1.)"],
  ),
  (
    "evaluate",
    "evaluate (+ Inception FID)",
    True,
    [
      "--config.evaluation.w_values=(0.,)",
      "--config.evaluation.num_samples=200",
      "--config.evaluation.reference_num_examples=200",
    ],
  ),
  (
    "likelihood",
    "likelihood",
    False,
    [
      "--config.likelihood.w_values=(0.,)",
      "--config.likelihood.num_examples=100",
      "--config.likelihood.rtol=1e-3",
      "--config.likelihood.atol=1e-3",
    ],
  ),
  (
    "distill",
    "distill",
    False,
    [
      "--config.distill.stage1_steps=40",
      "--config.distill.round_steps=20",
      "--config.distill.rounds=1",
      "--config.distill.start_num_steps=17",
    ],
  ),
  ("train_classifier", "train_classifier", False, ["--config.classifier.num_train_steps=100"]),
]
# A whole --mode=evaluate sweep on the digits workdir (w = 0, 1, 3 with 300 samples each, the
# README's example of earlier versions; the case's name is its cache key).
README_EVALUATE = [
  "--config.evaluation.w_values='(0.,1.,3.)'",
  "--config.evaluation.num_samples=300",
]
README_CASE = "evaluate: the README's command (+ Inception FID)"
SHOWN = {README_CASE: "evaluate, a whole sweep (+ Inception FID)"}  # the tables' names of cases
CLASSIFIER_FOR = {
  "mnist": ["--config.classifier.attn_resolutions=(7,)", "--config.classifier.ch_mult=(1,2,2)"]
}
# The config fields that set each mode's memory (listed with their default values).
MEMORY_FIELDS = {
  "train": ["training.batch_size", "sampling.batch_size", "evaluation.judge_num_samples"],
  "sample": ["sampling.batch_size", "sampling.num_samples"],
  "evaluate": ["evaluation.batch_size", "evaluation.feature_batch_size"],
  "likelihood": ["likelihood.batch_size", "likelihood.num_probes"],
  "distill": ["training.batch_size"],
  "train_classifier": ["classifier.batch_size"],
}


PROBE_BATCHES = (
  25,
  50,
  100,
)  # the Inception feature step alone, to fit cfg_jax/memory.py's figures


def probe_inception(batch: int) -> None:
  """The child of the Inception probe: one feature call of the evaluation job's Inception net at
  `batch` digits-shaped images (8x8, resized to 299x299 in the graph), nothing else."""
  import numpy as np

  from cfg_jax import config_lib, sharding
  from cfg_jax.evaluation import features

  c = config_lib.load_config(os.path.join(common.REPO, "configs", "digits.py"))
  with c.unlocked():
    c.evaluation.feature_batch_size = batch
  net = features.inception_net(c, sharding.make_mesh())
  x = np.random.RandomState(0).uniform(-1, 1, (batch, 8, 8, 1)).astype(np.float32)
  feats, _ = net.apply(x)
  assert feats.shape == (batch, 2048)


def inception_fit(probes: dict[int, float]) -> dict:
  """Least-squares fixed + per-image bytes of the probes' peak RSS {batch: GiB}, in MiB."""
  import numpy as np

  b = np.array(sorted(probes), float)
  y = np.array([probes[k] for k in sorted(probes)]) * 1024
  per_image, fixed = np.polyfit(b, y, 1)
  return {"fixed_mib": round(float(fixed), 1), "per_image_mib": round(float(per_image), 2)}


def readme_evaluate_command() -> str:
  """The whole evaluate sweep, as a shell line."""
  return " ".join(
    [
      "python -m cfg_jax.main --config=configs/digits.py --mode=evaluate --workdir=runs/digits",
      *README_EVALUATE,
    ]
  )


def run(cmd: list[str], log: str) -> dict:
  """Runs `cmd` in a fresh process; its exit status, wall time, peak resident memory (the
  child's ru_maxrss) and the 1-minute load average before and after."""
  load_before, start = os.getloadavg()[0], time.time()
  with open(log, "w") as f:
    proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=f, stderr=f)
    _, status, usage = os.wait4(proc.pid, 0)
  return {
    "status": os.waitstatus_to_exitcode(status),
    "seconds": round(time.time() - start, 1),
    "peak_rss_gib": round(usage.ru_maxrss * 1024 / GiB, 3),  # Linux: KiB
    "load_before": round(load_before, 2),
    "load_after": round(os.getloadavg()[0], 2),
  }


def weights_digest() -> str | None:
  """sha256 prefix of the Inception weights at the default location, or None if absent."""
  from cfg_jax.evaluation import inception

  path = inception.resolve_weights_path("")
  if path is None:
    return None
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def memory_fields(dataset: str, mode: str) -> dict:
  from cfg_jax import config_lib

  c = config_lib.load_config(os.path.join(common.REPO, "configs", f"{dataset}.py"))
  out = {}
  for field in MEMORY_FIELDS[mode]:
    section, key = field.split(".")
    out[field] = c[section][key]
  return out


def fid_nets(workdir: str) -> list[str]:
  """The `fid_net` of every row of the workdir's results.jsonl ('' = no Inception)."""
  path = os.path.join(workdir, "eval", "results.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line).get("fid_net", "") for line in f if line.strip()]


def has_checkpoint(workdir: str) -> bool:
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--datasets", default="digits,mnist")
  p.add_argument("--runs", default=os.path.join(common.REPO, "runs", "memory"))
  p.add_argument("--out", default=os.path.join(common.RESULTS, "memory"))
  p.add_argument("--readme_evaluate", action="store_true", help="a whole digits evaluate sweep")
  p.add_argument("--fresh", action="store_true", help="rerun cached cases")
  p.add_argument("--probe_inception", type=int, default=0, help=argparse.SUPPRESS)  # the child
  args = p.parse_args(argv)
  if args.probe_inception:
    return probe_inception(args.probe_inception)
  cache = {}
  if os.path.exists(args.out + ".json") and not args.fresh:
    with open(args.out + ".json") as f:
      cache = {c["key"]: c for c in json.load(f)["cases"]}
  start, machine, digest = time.time(), common.machine(), weights_digest()
  not_run = []
  for batch in PROBE_BATCHES if digest else ():
    key = f"inception step/batch {batch} [inception {digest}]"
    if key in cache and cache[key]["status"] == 0:
      continue
    log = os.path.join(args.runs, f"inception_probe_{batch}.log")
    os.makedirs(args.runs, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.memory", f"--probe_inception={batch}"]
    cache[key] = {
      "key": key,
      "dataset": "inception step",
      "case": f"batch {batch}",
      "mode": "probe",
      "batch": batch,
      "inception_weights": digest,
      "log": os.path.relpath(log, common.REPO),
      **run(cmd, log),
    }
    print(json.dumps(cache[key]), flush=True)
  for dataset in args.datasets.split(","):
    workdir = os.path.join(args.runs, dataset)
    cases = list(CASES)
    if args.readme_evaluate and dataset == "digits":
      cases.append(("evaluate", README_CASE, True, README_EVALUATE))
    for mode, name, uses_inception, extra in cases:
      if uses_inception and digest is None:
        not_run.append(f"{dataset}/{name}")
        print(f"{dataset}/{name}: not run, no Inception weights (make fid-weights)", flush=True)
        continue
      # A run with Inception is cached per weights: one measured without them never counts.
      key = f"{dataset}/{name}" + (f" [inception {digest}]" if uses_inception else "")
      if mode == "train" and not has_checkpoint(workdir):
        cache.pop(key, None)  # the later modes need its checkpoint
      if key in cache and cache[key]["status"] == 0:
        continue
      if mode == "train":
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resume that does nothing
      if mode == "evaluate":
        shutil.rmtree(os.path.join(workdir, "eval"), ignore_errors=True)  # whole: references too
      where = os.path.join(args.runs, f"{dataset}_distill") if mode == "distill" else workdir
      flags = [f"--config=configs/{dataset}.py", f"--workdir={where}", f"--mode={mode}"]
      flags += [e.replace("'", "") for e in extra]  # the shell quotes of the command
      if mode == "distill":
        flags.append(f"--config.distill.teacher_workdir={workdir}")
        shutil.rmtree(where, ignore_errors=True)
      if mode == "train_classifier":
        flags += CLASSIFIER_FOR.get(dataset, [])
      os.makedirs(args.runs, exist_ok=True)
      log = os.path.join(args.runs, f"{dataset}_{name.split(' ')[0].strip(':')}_{len(cache)}.log")
      result = run([sys.executable, "-m", "cfg_jax.main", *flags], log)
      case = {
        "key": key,
        "dataset": dataset,
        "case": name,
        "mode": mode,
        "memory_fields": memory_fields(dataset, mode),
        "overrides": extra + CLASSIFIER_FOR.get(dataset, []) * (mode == "train_classifier"),
        "inception_weights": digest if uses_inception else None,
        "log": os.path.relpath(log, common.REPO),
        **result,
      }
      if mode == "evaluate":
        nets = fid_nets(workdir)
        case["rows"], case["fid_net"] = len(nets), sorted(set(nets))
        if uses_inception and (not nets or "" in nets) and case["status"] == 0:
          case["status"] = "no FID in its rows"  # ran without Inception: does not count
      cache[key] = case
      print(json.dumps(case), flush=True)
      write(args, cache, machine, time.time() - start, not_run)
  write(args, cache, machine, time.time() - start, not_run)


def _ordered(cases: list[dict]) -> list[dict]:
  order = {name: i for i, (_, name, _, _) in enumerate(CASES)} | {README_CASE: len(CASES)}
  runs = [c for c in cases if c["mode"] != "probe"]
  return sorted(runs, key=lambda c: (c["dataset"], order.get(c["case"], 99)))


def probes_of(cases: list[dict]) -> dict[int, float]:
  """{batch: peak RSS GiB} of the Inception-step probes that succeeded."""
  return {c["batch"]: c["peak_rss_gib"] for c in cases if c["mode"] == "probe" and c["status"] == 0}


def docs_table(cases: list[dict]) -> str:
  """The mode x dataset table of docs/memory.md: peak RSS and wall time per run."""
  cells = {(c["case"], c["dataset"]): c for c in _ordered(cases)}
  names = list(dict.fromkeys(c["case"] for c in _ordered(cases)))
  datasets = list(dict.fromkeys(c["dataset"] for c in _ordered(cases)))
  head = " | ".join(f"{d} peak RSS (GiB) | {d} wall (s)" for d in datasets)
  lines = [f"| mode | {head} | shortened by |", "|---|" + "---:|---:|" * len(datasets) + "---|"]
  for name in names:
    row = []
    for d in datasets:
      c = cells.get((name, d))
      ok = c is not None and c["status"] == 0
      row += [f"{c['peak_rss_gib']:.2f}", f"{c['seconds']:.0f}"] if ok else ["—", "—"]
    first = next(cells[(name, d)] for d in datasets if (name, d) in cells)
    short = [o.removeprefix("--config.").replace("'", "") for o in first["overrides"]]
    short = [o for o in short if not o.startswith(("classifier.attn", "classifier.ch_mult"))]
    short = ", ".join(f"`{o}`" for o in short) or "—"
    if first["case"] == README_CASE:
      short = "nothing: w = 0, 1, 3 with 300 samples each"
    lines.append(f"| {SHOWN.get(name, name)} | {' | '.join(row)} | {short} |")
  return "\n".join(lines) + "\n"


def readme_table(cases: list[dict]) -> str:
  """The README's small table: the peak RSS of each mode, digits / MNIST, rounded up to 0.1 GiB."""
  cells = {(c["case"], c["dataset"]): c for c in _ordered(cases) if c["status"] == 0}
  names = list(dict.fromkeys(c["case"] for c in _ordered(cases)))
  lines = ["| mode | peak RAM, digits / MNIST (GiB) |", "|---|---|"]
  for name in names:
    vals = [
      f"{math.ceil(cells[(name, d)]['peak_rss_gib'] * 10) / 10:.1f}" if (name, d) in cells else "—"
      for d in ("digits", "mnist")
    ]
    label = (
      "evaluate, a whole sweep (w = 0, 1, 3; 300 samples each)" if name == README_CASE else name
    )
    lines.append(f"| {label} | {' / '.join(v for v in vals if name != README_CASE or v != '—')} |")
  return "\n".join(lines) + "\n"


def write(args, cache: dict, machine: str, seconds: float, not_run: list[str]) -> None:
  cases = list(cache.values())
  lines = [
    "# Peak memory of every mode (measured RSS, fresh process per run)",
    "",
    f"`python -m benchmarks.memory{' --readme_evaluate' if args.readme_evaluate else ''}` on "
    f"{machine} (at the start of the last invocation); the runs below took "
    f"{sum(c['seconds'] for c in cases) / 60:.0f} min of wall time in all, beside other jobs "
    "on the same 2 cores (the `load` column). Each row is one `python -m cfg_jax.main` process; "
    "`peak RSS` is its own ru_maxrss, `load` the 1-minute load average before → after it. "
    "Everything that sets memory is the config's default (`memory set by`; "
    "`evaluation.feature_batch_size=0` is auto, 50 on CPU); the overrides only shorten the run "
    "(fewer steps, w values, samples or images). Every evaluate run starts from an empty `eval/` "
    "(reference statistics included). A failed run (status ≠ 0) is listed with its status.",
    "",
    "| dataset | mode | peak RSS (GiB) | wall time (s) | load | status | memory set by | overrides |",
    "|---|---|---:|---:|---|---|---|---|",
  ]
  for c in _ordered(cases):
    extra = " ".join(f"`{o.removeprefix('--config.')}`" for o in c["overrides"]) or "—"
    fields = ", ".join(f"`{k}={v}`" for k, v in c.get("memory_fields", {}).items())
    load = f"{c.get('load_before', float('nan')):.1f} → {c.get('load_after', float('nan')):.1f}"
    lines.append(
      f"| {c['dataset']} | {SHOWN.get(c['case'], c['case'])} | {c['peak_rss_gib']:.2f} | {c['seconds']:.0f} | "
      f"{load} | {c['status']} | {fields} | {extra} |"
    )
  if any(c["case"] == README_CASE for c in cases):
    lines += ["", f"The whole sweep: `{readme_evaluate_command()}`."]
  probes = probes_of(cases)
  fit = inception_fit(probes) if len(probes) >= 2 else None
  if probes:
    lines += [
      "",
      "## The Inception feature step alone",
      "",
      "One call of the evaluation job's Inception net (`features.inception_net`) on digits-shaped "
      "images resized to 299×299 in the graph, in a fresh process (`--probe_inception=BATCH`): "
      "what `cfg_jax/memory.py` predicts before an evaluate run starts.",
      "",
      "| batch | peak RSS (GiB) | wall time (s) | load |",
      "|---:|---:|---:|---|",
    ]
    for c in sorted((c for c in cases if c["mode"] == "probe"), key=lambda c: c["batch"]):
      lines.append(
        f"| {c['batch']} | {c['peak_rss_gib']:.2f} | {c['seconds']:.0f} | "
        f"{c['load_before']:.1f} → {c['load_after']:.1f} |"
      )
  if fit:
    lines += [
      "",
      f"Least-squares fit: {fit['fixed_mib']:.0f} MiB + {fit['per_image_mib']:.1f} MiB per image "
      "(`cfg_jax/memory.py`: INCEPTION_FIXED_BYTES, INCEPTION_BYTES_PER_IMAGE; a test keeps "
      "them within 10% of this fit).",
    ]
  if not_run:
    lines += ["", "Not run (no Inception weights; `make fid-weights`): " + ", ".join(not_run)]
  data = {
    "machine": machine,
    "seconds": round(seconds, 1),
    "cases": cases,
    "inception_fit": fit,
    "not_run": not_run,
  }
  common.write_report(args.out, data, "\n".join(lines) + "\n")
  common.splice(os.path.join(common.REPO, "docs", "memory.md"), "memory-table", docs_table(cases))
  common.splice(os.path.join(common.REPO, "README.md"), "memory-table", readme_table(cases))


if __name__ == "__main__":
  main()
