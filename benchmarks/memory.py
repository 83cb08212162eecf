"""Peak memory of every mode: each run of the real CLI in a fresh process, its peak RSS and wall time.

    python -m benchmarks.memory                         # digits and mnist, every mode
    python -m benchmarks.memory --datasets digits       # one dataset
    python -m benchmarks.memory --readme_evaluate       # also the README's evaluate command, whole

For each embedded dataset it trains a model, then runs --mode=sample, evaluate (without and with
the FID Inception, when its weights are installed), likelihood, distill and train_classifier on
it, each with the config's defaults for everything that sets memory (model, batch sizes, sampler
batch, Inception feature batch, likelihood batch) and a shorter run where the length does not
(fewer steps, w values, samples or images: listed in the table). The peak is the child's own
`ru_maxrss` (os.wait4), i.e. measured resident memory, not XLA's memory_analysis (which leaves out
the CPU runtime's convolution scratch). Writes benchmarks/results/memory.{md,json}; a rerun
reuses cached cases (--fresh to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common

GiB = 2**30
# (mode, case name, overrides that shorten the run without changing what sets its memory)
CASES = [
  ("train", "train", ["--config.training.num_train_steps=200"]),
  ("sample", "sample", []),
  (
    "evaluate",
    "evaluate (dataset classifier)",
    ["--config.evaluation.inception_weights=none", "--config.evaluation.w_values=(0.,1.)"],
  ),
  (
    "evaluate",
    "evaluate (+ Inception FID)",
    [
      "--config.evaluation.w_values=(0.,)",
      "--config.evaluation.num_samples=200",
      "--config.evaluation.reference_num_examples=200",
    ],
  ),
  (
    "likelihood",
    "likelihood",
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
    [
      "--config.distill.stage1_steps=40",
      "--config.distill.round_steps=20",
      "--config.distill.rounds=1",
      "--config.distill.start_num_steps=17",
    ],
  ),
  ("train_classifier", "train_classifier", ["--config.classifier.num_train_steps=100"]),
]
README_EVALUATE = [
  "--config.evaluation.w_values=(0.,0.3,1.,3.)",
  "--config.evaluation.num_samples=500",
]
CLASSIFIER_FOR = {
  "mnist": ["--config.classifier.attn_resolutions=(7,)", "--config.classifier.ch_mult=(1,2,2)"]
}


def run(args: list[str], log: str) -> dict:
  """Runs `python -m cfg_jax.main *args` in a fresh process; its exit status, wall time and peak
  resident memory (the child's ru_maxrss)."""
  start = time.time()
  with open(log, "w") as f:
    proc = subprocess.Popen(
      [sys.executable, "-m", "cfg_jax.main", *args], cwd=common.REPO, stdout=f, stderr=f
    )
    _, status, usage = os.wait4(proc.pid, 0)
  return {
    "status": os.waitstatus_to_exitcode(status),
    "seconds": round(time.time() - start, 1),
    "peak_rss_gib": round(usage.ru_maxrss * 1024 / GiB, 3),  # Linux: KiB
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--datasets", default="digits,mnist")
  p.add_argument("--runs", default=os.path.join(common.REPO, "runs", "memory"))
  p.add_argument("--out", default=os.path.join(common.RESULTS, "memory"))
  p.add_argument("--readme_evaluate", action="store_true", help="the README's evaluate, whole")
  p.add_argument("--fresh", action="store_true", help="rerun cached cases")
  args = p.parse_args(argv)
  cache = {}
  if os.path.exists(args.out + ".json") and not args.fresh:
    with open(args.out + ".json") as f:
      cache = {c["key"]: c for c in json.load(f)["cases"]}
  start, machine = time.time(), common.machine()
  for dataset in args.datasets.split(","):
    workdir = os.path.join(args.runs, dataset)
    cases = list(CASES)
    if args.readme_evaluate and dataset == "digits":
      cases.append(
        ("evaluate", "evaluate: the README's command (+ Inception FID)", README_EVALUATE)
      )
    for mode, name, extra in cases:
      key = f"{dataset}/{name}"
      if key in cache and cache[key]["status"] == 0:
        continue
      if mode == "train" and not args.fresh and key not in cache:
        shutil.rmtree(workdir, ignore_errors=True)
      where = os.path.join(args.runs, f"{dataset}_distill") if mode == "distill" else workdir
      flags = [f"--config=configs/{dataset}.py", f"--workdir={where}", f"--mode={mode}", *extra]
      if mode == "distill":
        flags.append(f"--config.distill.teacher_workdir={workdir}")
        shutil.rmtree(where, ignore_errors=True)
      if mode == "train_classifier":
        flags += CLASSIFIER_FOR.get(dataset, [])
      os.makedirs(args.runs, exist_ok=True)
      result = run(flags, os.path.join(args.runs, f"{dataset}_{mode}_{len(cache)}.log"))
      cache[key] = {
        "key": key,
        "dataset": dataset,
        "case": name,
        "mode": mode,
        "overrides": extra + CLASSIFIER_FOR.get(dataset, []) * (mode == "train_classifier"),
        **result,
      }
      print(json.dumps(cache[key]), flush=True)
      write(args, cache, machine, time.time() - start)
  write(args, cache, machine, time.time() - start)


def write(args, cache: dict, machine: str, seconds: float) -> None:
  cases = list(cache.values())
  lines = [
    "# Peak memory of every mode (measured RSS, fresh process per run)",
    "",
    f"`python -m benchmarks.memory{' --readme_evaluate' if args.readme_evaluate else ''}` on "
    f"{machine}; this run {seconds / 60:.0f} min. Each row is one `python -m cfg_jax.main` "
    "process; `peak RSS` is its own ru_maxrss. Everything that sets memory is the config's "
    "default; the overrides only shorten the run (fewer steps, w values, samples or images). "
    "A failed run (status ≠ 0) is listed with its status.",
    "",
    "| dataset | mode | peak RSS (GiB) | wall time (s) | status | overrides |",
    "|---|---|---:|---:|---:|---|",
  ]
  for c in sorted(cases, key=lambda c: (c["dataset"], c["key"])):
    extra = " ".join(f"`{o.removeprefix('--config.')}`" for o in c["overrides"]) or "—"
    lines.append(
      f"| {c['dataset']} | {c['case']} | {c['peak_rss_gib']:.2f} | {c['seconds']:.0f} | "
      f"{c['status']} | {extra} |"
    )
  common.write_report(args.out, {"machine": machine, "cases": cases}, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
