"""Every guidance method on one checkpoint, from the same noise and labels, with the paper's metric.

    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/gm/mnist       # p_uncond 0.1
    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/gm/mnist_p0 \
        --config.guidance.p_uncond=0.0                          # for ICG without label dropout
    python -m benchmarks.guidance_methods --config=configs/mnist.py --workdir=runs/gm/mnist \
        --p0_workdir=runs/gm/mnist_p0 --inception_weights= --num_samples=300 --readme
    python -m benchmarks.guidance_methods --report_only --readme   # the tables again, from the .json
    python -m benchmarks.guidance_methods --config=configs/digits.py --workdir=runs/digits \
        --inception_weights=none --num_samples=1000 --out=benchmarks/results/guidance_methods_digits

For the checkpoint of --workdir (the config's last step by default) it sweeps classifier-free
guidance (ancestral, the paper's sampler, and DDIM, CFG++'s), CFG++, APG, CFG-Zero*, ICG and a
guidance-weight schedule, each over its own strength grid, through `cfg_jax.jobs.evaluate.Evaluator`
(the code of --mode=evaluate: rows, TensorBoard scalars and features go to the workdir; cells
already there are not sampled again), and ICG on a model trained with p_uncond = 0 (`--p0_workdir`)
beside classifier-free guidance on the p_uncond 0.1 model. Sample i of every cell shares its noise
and label, so a paired bootstrap over the samples gives each FID(cell) − FID(CFG, w = 0) its
spread, and each method's best against CFG's best. Writes benchmarks/results/guidance_methods.md
(+ .json) and a sample grid per method at its highest strength; `--readme` writes the summary
(one row per method's best cell) into README.md between its guidance-methods-table markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import common

# name: (evaluation.guidance, overrides of the config, the strength grid, what it is)
METHODS = {
  "cfg": ("cfg", {}, (0.0, 1.0, 2.0, 4.0), "classifier-free, ancestral (the paper's)"),
  "cfg_ddim": ("cfg", {"sampling.sampler": "ddim"}, (1.0, 2.0, 4.0), "classifier-free, DDIM"),
  "cfgpp": ("cfgpp", {"sampling.sampler": "ddim"}, (0.2, 0.5, 0.8), "CFG++ (DDIM), over l"),
  "apg": ("apg", {"apg.eta": 0.0, "apg.momentum": -0.5}, (1.0, 2.0, 4.0), "APG, η 0, β −0.5"),
  "cfg_zero": ("cfg_zero", {"cfg_zero.zero_steps": 1}, (1.0, 2.0, 4.0), "CFG-Zero*, K = 1"),
  "icg": ("icg", {}, (1.0, 2.0, 4.0), "ICG (random c̃), same model"),
  "cfg_schedule": (
    "cfg_schedule",
    {"w_schedule.shape": "linear"},
    (1.0, 2.0, 4.0),
    "linear w schedule (mean w)",
  ),
  "icg_p0": ("icg", {}, (0.0, 1.0, 2.0, 4.0), "ICG on the model trained with p_uncond = 0"),
}
BASELINE = ("cfg", 0.0)


def method_config(name: str, args):
  """The config of one method's sweep (the model's own config, then the method's fields)."""
  from cfg_jax import config_lib

  c = config_lib.load_config(args.config)
  guidance, overrides, grid, _ = METHODS[name]
  ev = c.evaluation
  ev.guidance, ev.num_samples, ev.save_features = guidance, args.num_samples, True
  ev.inception_weights, ev.checkpoint_step = args.inception_weights, args.step
  if args.reference_examples is not None:
    ev.reference_num_examples = args.reference_examples
  if args.eval_batch is not None:
    ev.batch_size = args.eval_batch
  for key, value in overrides.items():
    section, _, field = key.partition(".")
    c[section][field] = value
  if guidance == "cfgpp":
    c.cfgpp.scales = tuple(grid)
  else:
    ev.w_values = tuple(grid)
  if name == "icg_p0":
    c.guidance.p_uncond = 0.0
  return c


def evaluate_method(name: str, args) -> tuple[list[dict], dict, object]:
  """(rows, {strength: saved feature arrays}, evaluator) of one method's cells."""
  from cfg_jax import validation
  from cfg_jax.jobs import evaluate as evaluate_job

  workdir = args.p0_workdir if name == "icg_p0" else args.workdir
  c = method_config(name, args)
  validation.validate(c, workdir=workdir)
  evaluator = evaluate_job.Evaluator(c, workdir)
  start = time.time()
  rows = evaluator.evaluate_step(args.step)
  print(f"{name}: {len(rows)} cells, {time.time() - start:.0f} s", flush=True)
  feats = {}
  for r in rows:
    w = r[evaluator.method.strength_field]
    with np.load(evaluator.features_file(step=r["step"], num_steps=r["num_steps"], w=w)) as f:
      feats[w] = {k: f[k] for k in f.files}
  return rows, feats, evaluator


def sample_grid(name: str, evaluator, args, strength: float) -> str:
  """A class-per-row PNG of the method at `strength` (the same noise for every method)."""
  import jax

  from cfg_jax import images, sampling_runner, train_state

  c = evaluator.config
  params, _ = train_state.restore_params(
    c, evaluator.workdir, evaluator.mesh, step=args.step, gather=True
  )
  labels = np.repeat(np.arange(10, dtype=np.int32), 8)
  x = sampling_runner.generate(
    evaluator.sampler(c.sampling.num_steps),
    params,
    jax.random.fold_in(jax.random.key(c.seed), 3),
    labels=labels,
    w=strength,
    batch_size=80,
    mesh=evaluator.mesh,
  )
  path = f"{args.out}_grid_{name}.png"
  images.save_png(images.make_grid(x, ncols=8), path)
  return path


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(common.REPO, "configs", "mnist.py"))
  p.add_argument("--workdir", default="", help="the p_uncond 0.1 model's workdir")
  p.add_argument("--p0_workdir", default="", help="a p_uncond = 0 model's workdir (icg_p0)")
  p.add_argument("--step", type=int, default=None, help="default: the config's last step")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--num_samples", type=int, default=300)
  p.add_argument("--reference_examples", type=int, default=1000)
  p.add_argument("--eval_batch", type=int, default=None)
  p.add_argument("--inception_weights", default="", help="'' = the default location; 'none'")
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--no_grids", action="store_true")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "guidance_methods"))
  p.add_argument("--readme", action="store_true", help="write the summary into README.md")
  p.add_argument("--report_only", action="store_true", help="the tables from <out>.json")
  return p


def main(argv=None):
  args = parser().parse_args(argv)
  if args.report_only:
    with open(args.out + ".json") as f:
      data = json.load(f)
  elif not args.workdir:
    raise SystemExit("--workdir is required (the p_uncond 0.1 model's), or --report_only.")
  else:
    data = measure(args, sys.argv[1:] if argv is None else argv)
  data["grids"] = {k: repo_relative(v) for k, v in data.get("grids", {}).items()}
  text = report(data)
  common.write_report(args.out, data, text)
  print(text)
  if args.readme:
    common.splice(
      os.path.join(common.REPO, "README.md"), "guidance-methods-table", readme_table(data)
    )


def measure(args, argv: list[str]) -> dict:
  """Evaluates every method's cells, bootstraps them and draws the grids: the results' data."""
  from cfg_jax import config_lib

  start = time.time()
  if args.step is None:
    args.step = config_lib.load_config(args.config).training.num_train_steps
  names = [n for n in args.methods.split(",") if n and (n != "icg_p0" or args.p0_workdir)]
  results, feats, evaluators = {}, {}, {}
  for name in names:
    rows, f, evaluators[name] = evaluate_method(name, args)
    results[name] = {"rows": rows}
    feats.update({(name, w): x for w, x in f.items()})
  common.check_paired(feats)
  boot = common.paired_bootstrap(feats, evaluators[names[0]], rounds=args.rounds, seed=0)
  grids = {}
  if not args.no_grids:
    for name in names:
      grids[name] = sample_grid(name, evaluators[name], args, max(METHODS[name][2]))
  return {
    "argv": argv,
    "machine": common.machine(),
    "seconds": time.time() - start,
    "results": results,
    "bootstrap": {
      m: {f"{k[0]}|{k[1]:g}": v.tolist() for k, v in b.items()} for m, b in boot.items()
    },
    "grids": grids,
  }


def repo_relative(path: str) -> str:
  return os.path.relpath(path, common.REPO) if os.path.isabs(path) else path


def method_info(name: str) -> tuple[str, str]:
  """(the results column of the method's strength, its symbol)."""
  from cfg_jax import guidance

  m = guidance.get(METHODS[name][0])
  return m.strength_field, m.symbol


def precision_recall(row: dict, metric: str) -> tuple[float, float]:
  """A results row's precision and recall on the features of `metric` ('fid': Inception's)."""
  if metric == "fid":
    return row["fid_precision"], row["fid_recall"]
  return row["precision"], row["recall"]


def in_order(results: dict) -> list[tuple[str, dict]]:
  """The methods' results in the order of METHODS (a .json keeps them sorted by name)."""
  return [(n, results[n]) for n in METHODS if n in results]


def bootstrap_arrays(data: dict) -> tuple[str, dict]:
  """(the metric: 'fid' when Inception was used, else 'fd'; {(method, strength): rounds})."""
  metric = "fid" if "fid" in data["bootstrap"] else "fd"
  boot = {}
  for k, v in data["bootstrap"][metric].items():
    name, _, w = k.rpartition("|")
    boot[(name, float(w))] = np.asarray(v)
  return metric, boot


def best_cells(data: dict) -> list[dict]:
  """Per method, its lowest-FID cell with the paired differences against CFG w = 0 and against
  CFG's best cell."""
  metric, b = bootstrap_arrays(data)
  results = data["results"]
  base = b[BASELINE]
  cfg_best = min(results["cfg"]["rows"], key=lambda r: r[metric])
  cfg_best_key = ("cfg", cfg_best["w"])
  out = []
  for name, res in in_order(results):
    field, symbol = method_info(name)
    r = min(res["rows"], key=lambda r: r[metric])
    k = (name, r[field])
    d0, db = b[k] - base, b[k] - b[cfg_best_key]
    settings = json.loads(r["sampler_settings"])
    pp, rr = precision_recall(r, metric)
    out.append(
      {
        "name": name,
        "what": METHODS[name][3],
        "strength": f"{symbol} = {r[field]:g}",
        "value": r[metric],
        "std": b[k].std(),
        "d0": d0,
        "db": db,
        "precision": pp,
        "recall": rr,
        "accuracy": r["class_accuracy"],
        "evals": settings["network_evals"],
        "per_eval": "2B (one [z, z] forward)" if settings["guided_evals"] else "B",
        "cfg_best_w": cfg_best["w"],
      }
    )
  return out


def report(data: dict) -> str:
  args = parser().parse_args(data["argv"])
  step = args.step if args.step is not None else data["results"]["cfg"]["rows"][0]["step"]
  metric, b = bootstrap_arrays(data)
  base = b[BASELINE]
  best = best_cells(data)
  rounds = len(base)
  lines = [
    "# Guidance methods on one checkpoint",
    "",
    f"`python -m benchmarks.guidance_methods {' '.join(args_list(args))}` on {data['machine']}; "
    f"{data['seconds'] / 60:.0f} min. Checkpoint step {step} of `{os.path.basename(args.config)}` "
    f"(p_uncond 0.1; ICG on p_uncond 0 where named), n = {args.num_samples} class-balanced "
    "samples per cell, sample i of every cell from the same noise and label; "
    + ("real Inception FID" if metric == "fid" else "the dataset classifier's FD")
    + f" against {args.reference_examples} train images; ± the std over {rounds} paired "
    "bootstrap rounds; Δ against classifier-free w = 0 and against classifier-free guidance's best "
    f"cell (w = {best[0]['cfg_best_w']:g}); P the fraction of rounds in which the cell is lower. "
    "Precision / recall on Inception features (k = 3) when Inception is used, else on the "
    "classifier's.",
    "",
    "## Each method's best cell",
    "",
    f"| method | best strength | {metric.upper()} | Δ vs CFG w = 0 | Δ vs CFG best | P(< CFG best) | "
    "precision | recall | class accuracy | network evaluations per sample |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in best:
    d0, db = c["d0"], c["db"]
    lines.append(
      f"| {c['what']} | {c['strength']} | {c['value']:.2f} ± {c['std']:.2f} | "
      f"{d0.mean():+.2f} ± {d0.std():.2f} | {db.mean():+.2f} ± {db.std():.2f} | "
      f"{np.mean(db < 0):.2f} | {c['precision']:.3f} | {c['recall']:.3f} | {c['accuracy']:.3f} | "
      f"{c['evals']} × {c['per_eval']} |"
    )
  lines += ["", "## Every cell", ""]
  lines += [
    f"| method | strength | {metric.upper()} ± std | Δ vs CFG w = 0 | FD (classifier) | IS | "
    "class accuracy | precision | recall |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, res in in_order(data["results"]):
    field, symbol = method_info(name)
    for r in res["rows"]:
      k = (name, r[field])
      d0 = b[k] - base
      pp, rr = precision_recall(r, metric)
      lines.append(
        f"| {name} | {symbol} = {r[field]:g} | {r[metric]:.2f} ± "
        f"{b[k].std():.2f} | {d0.mean():+.2f} ± {d0.std():.2f} | {r['fd']:.2f} | {r['is']:.3f} | "
        f"{r['class_accuracy']:.3f} | {pp:.3f} | {rr:.3f} |"
      )
  if data.get("grids"):
    lines += ["", "## Sample grids at each method's highest strength", ""]
    lines += [f"- {name}: `{path}`" for name, path in in_order(data["grids"])]
  return "\n".join(lines) + "\n"


def readme_table(data: dict) -> str:
  """The README's summary: one row per method's best cell."""
  metric, _ = bootstrap_arrays(data)
  m = metric.upper()
  lines = [
    f"| method | best strength | {m} | Δ{m} vs CFG w = 0 | Δ{m} vs CFG's best | recall | "
    "network evaluations per sample |",
    "|---|---|---|---|---|---|---|",
  ]
  for c in best_cells(data):
    d0, db = c["d0"], c["db"]
    lines.append(
      f"| {c['what']} | {c['strength']} | {c['value']:.1f} | {d0.mean():+.1f} ± {d0.std():.1f} | "
      f"{db.mean():+.1f} ± {db.std():.1f} | {c['recall']:.3f} | {c['evals']} × {c['per_eval']} |"
    )
  return "\n".join(lines) + "\n"


def args_list(args) -> list[str]:
  keep = ("config", "workdir", "p0_workdir", "step", "num_samples", "reference_examples")
  return [
    f"--{k}={repo_relative(v) if k == 'config' else v}"
    for k in keep
    if (v := getattr(args, k)) not in ("", None)
  ]


if __name__ == "__main__":
  main()
