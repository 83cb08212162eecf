"""Autoguidance beside classifier-free and classifier guidance on an embedded dataset.

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/ag/main \
      --config.training.checkpoint_every_steps=375 --config.training.max_checkpoints_to_keep=4
    python -m cfg_jax.main --config=configs/digits_guide.py --workdir=runs/ag/guide_small
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/ag/clf --mode=train_classifier
    python -m benchmarks.autoguidance --main=runs/ag/main --small_guide=runs/ag/guide_small \
      --classifier=runs/ag/clf          # tables to benchmarks/results/autoguidance.md
    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/mnist  # checkpoints every 300
    python -m cfg_jax.main --config=configs/mnist_guide.py --workdir=runs/ag_mnist/guide_small
    python -m benchmarks.autoguidance --config=configs/mnist.py --main=runs/mnist \
      --small_guide=runs/ag_mnist/guide_small --early_step 300 --num_samples=300 \
      --reference_examples=1000 --eval_batch=100 --inception_weights= \
      --methods=cfg,auto_early,auto_small --out=benchmarks/results/autoguidance_mnist  # real FID

From the same main checkpoint, through `cfg_jax.jobs.evaluate.Evaluator` (the code of
`--mode=evaluate`; rows, TensorBoard scalars and features go to the main workdir): classifier-free
guidance over w, classifier guidance over s, and autoguidance over w with two guides (an earlier
checkpoint of the main run, and configs/<dataset>_guide.py). Metrics come from the dataset's
classifier (FD, IS, class accuracy, precision, recall), with the real Inception FID beside them
when `--inception_weights` names weights. Sample i of every cell shares its noise and label,
so a paired bootstrap over the samples gives the spread of FD(cell) − FD(w = 0). Resumable: cells
already in results.jsonl (same settings, with features) are not sampled again; `--methods` runs a
subset (each method is one compile and a few minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks import common
from benchmarks.common import REPO

METHODS = ("cfg", "auto_early", "auto_small", "classifier")


def method_names(args) -> list[str]:
  """Result keys of the requested methods: cfg first, auto_early as one auto_early_<step> per
  `--early_step`."""
  names = ["cfg"]
  for m in args.methods.split(","):
    if m == "auto_early":
      names += [f"auto_early_{s}" for s in args.early_step]
    elif m and m != "cfg":
      names.append(m)
  return names


def method_config(name: str, args):
  """The `--config` config of one method's sweep."""
  from cfg_jax import config_lib

  c = config_lib.load_config(args.config)
  ev = c.evaluation
  ev.num_samples, ev.inception_weights, ev.save_features = (
    args.num_samples,
    args.inception_weights,
    True,
  )
  ev.checkpoint_step, c.seed = args.main_step, args.seed
  if args.reference_examples is not None:
    ev.reference_num_examples = args.reference_examples
  if args.eval_batch is not None:
    ev.batch_size = args.eval_batch  # Inception on a CPU: ~100 beats one big batch
  if name == "cfg":
    ev.w_values = tuple(args.cfg_w)
  elif name == "classifier":
    ev.guidance, ev.classifier_scales = "classifier", tuple(args.scales)
    ev.classifier_workdir = args.classifier
  else:
    ev.guidance, ev.w_values = "auto", tuple(args.auto_w)
    if name == "auto_small" and args.small_w:
      ev.w_values = tuple(args.small_w)
    if name.startswith("auto_early_"):
      c.autoguidance.update(workdir=args.main, checkpoint_step=int(name.rsplit("_", 1)[1]))
    else:
      c.autoguidance.update(workdir=args.small_guide, config=args.small_config)
  return c


def evaluate_method(name: str, args) -> tuple[list[dict], dict[float, dict], object]:
  """(rows, {value: saved features file's arrays}, evaluator) of one method, sampling the missing
  cells."""
  from cfg_jax import validation
  from cfg_jax.evaluation import results
  from cfg_jax.jobs import evaluate as evaluate_job

  c = method_config(name, args)
  validation.validate(c, workdir=args.main)
  evaluator = evaluate_job.Evaluator(c, args.main)
  t, n = c.sampling.num_steps, c.evaluation.num_samples
  key = evaluator.settings_key(t)

  def path(v):
    return results.features_path(
      args.main,
      step=args.main_step,
      num_steps=t,
      guidance=evaluator.features_tag,
      w=v,
      num_samples=n,
    )

  def done() -> dict[float, dict]:
    return {
      results.guidance_strength(r): r
      for r in results.load_results(args.main)
      if r["step"] == args.main_step
      and r["num_samples"] == n
      and r.get("sampler_settings") == key
      and os.path.exists(path(results.guidance_strength(r)))
    }

  values = [float(v) for v in evaluator.method.strengths(c)]
  field = "classifier_scales" if c.evaluation.guidance == "classifier" else "w_values"
  for v in [v for v in values if v not in done() and not args.report_only]:  # each row is kept
    c.evaluation[field] = (v,)
    start = time.time()
    evaluator.evaluate_step(args.main_step)
    print(f"{name} {v:g}: {time.time() - start:.0f} s", flush=True)
  rows = done()
  values = [v for v in values if v in rows]  # --report_only: the cells present
  feats = {}
  for v in values:
    with np.load(path(v)) as f:
      feats[v] = {k: f[k] for k in f.files}
  return [rows[v] for v in values], feats, evaluator


def kind(name: str) -> str:
  return "auto_early" if name.startswith("auto_early_") else name


def network_cost(name: str, args) -> str:
  """Network evaluations per sample of one sweep at T steps (w > 0)."""
  t = args.num_steps
  if name == "auto_small":
    return f"{t} main + {t} guide ({args.small_param_ratio:.0%} of the params)"
  return {
    "cfg": f"{t} main on [z, z] (2×{t} forwards)",
    "auto_early": f"{t} main + {t} guide (same size)",
    "classifier": f"{t} main + {t} classifier forward+backward",
  }[kind(name)]


def label(name: str, args) -> str:
  if kind(name) == "auto_early":
    return f"autoguidance, guide = step {name.rsplit('_', 1)[1]} of the main run (w)"
  if name == "auto_small":
    return f"autoguidance, guide = {os.path.basename(args.small_config)}, {args.small_desc} (w)"
  return {"cfg": "classifier-free (w)", "classifier": "classifier guidance (scale s)"}[name]


def cells(value: str, b: np.ndarray, base: np.ndarray) -> str:
  """'value ± std | Δ ± std | P(<w0)' of one metric of one cell."""
  d = b - base
  return f"{value} ± {b.std():.2f} | {np.mean(d):+.2f} ± {d.std():.2f} | {np.mean(d < 0):.2f}"


def report(results: dict, args, seconds: float) -> str:
  import jax

  from cfg_jax.evaluation import results as eval_results

  fid = "fid" in next(iter(results.values()))["boot"]
  base = {m: results["cfg"]["boot"][m][0.0] for m in results["cfg"]["boot"]}
  dataset = os.path.splitext(os.path.basename(args.config))[0]
  fid_text = (
    " FID is the real Inception FID (TF 2015-12-05 graph) of the same samples against "
    f"{args.reference_text}; ΔFID and P(<w0) likewise."
    if fid
    else ""
  )
  lines = [
    f"# Autoguidance vs classifier-free and classifier guidance ({dataset})",
    "",
    f"Generated by `python -m benchmarks.autoguidance{args.argv}` ({time.strftime('%Y-%m-%d')}, "
    f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {seconds:.0f} s).",
    f"Main model: configs/{dataset}.py (p_uncond {args.p_uncond:g}) at step {args.main_step}; T = "
    f"{args.num_steps} ancestral steps; n = {args.num_samples} class-balanced samples per cell "
    f"(seed {args.seed}), every cell from the same noise and labels. Metrics from the {dataset} "
    "classifier (FD = Fréchet distance of its features against the train split; not Inception "
    f"FID). ± is the std of a paired bootstrap ({args.rounds} rounds over the samples); "
    "ΔFD is FD(cell) − FD(w = 0) of the same rounds, and P(<w0) the fraction of rounds where the "
    f"cell's FD is below w = 0's.{fid_text}",
    "",
  ]
  fid_head = "FID | ΔFID vs w=0 | P(<w0) | " if fid else ""
  best = []
  for name, res in results.items():
    lines += [
      f"## {label(name, args)}",
      "",
      f"| value | {fid_head}FD | ΔFD vs w=0 | P(<w0) | IS | class acc | precision | recall "
      "| s/cell |",
      "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if fid else ""),
    ]
    for r in res["rows"]:
      v = eval_results.guidance_strength(r)
      b = {m: res["boot"][m][v] for m in res["boot"]}
      fid_cells = f"{cells(format(r['fid'], '.2f'), b['fid'], base['fid'])} | " if fid else ""
      lines.append(
        f"| {v:g} | {fid_cells}{cells(format(r['fd'], '.2f'), b['fd'], base['fd'])} "
        f"| {r['is']:.2f} | {r['class_accuracy']:.3f} "
        f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['seconds']:.0f} |"
      )
    metric = "fid" if fid else "fd"
    r = min(res["rows"], key=lambda r: r[metric])
    v = eval_results.guidance_strength(r)
    best.append((name, v, r, {m: res["boot"][m][v] for m in res["boot"]}))
    lines.append("")
  lines += [
    f"## Best {'FID' if fid else 'FD'} per method",
    "",
    f"| method | best at | {fid_head}FD | ΔFD vs w=0 | P(<w0) | class acc | recall "
    "| cost per sample |",
    "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if fid else ""),
  ]
  for name, v, r, b in best:
    sym = "s" if name == "classifier" else "w"
    fid_cells = f"{cells(format(r['fid'], '.2f'), b['fid'], base['fid'])} | " if fid else ""
    lines.append(
      f"| {label(name, args)} | {sym} = {v:g} | {fid_cells}"
      f"{cells(format(r['fd'], '.2f'), b['fd'], base['fd'])} "
      f"| {r['class_accuracy']:.3f} | {r['recall']:.3f} | {network_cost(name, args)} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "digits.py"))
  p.add_argument("--main", required=True, help="main workdir (trained with --config)")
  p.add_argument("--main_step", type=int, default=None, help="default: the config's last step")
  p.add_argument(
    "--early_step",
    type=int,
    nargs="+",
    default=None,
    help="earlier-checkpoint guides (default: ¼ of the config's steps)",
  )
  p.add_argument("--small_guide", default="", help="workdir of configs/<dataset>_guide.py")
  p.add_argument("--small_config", default="", help="default: configs/<dataset>_guide.py")
  p.add_argument("--classifier", default="", help="workdir of --mode=train_classifier")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--num_samples", type=int, default=500)
  p.add_argument("--reference_examples", type=int, default=None, help="default: the config's")
  p.add_argument("--eval_batch", type=int, default=None, help="default: the config's")
  p.add_argument(
    "--inception_weights",
    default="none",
    help="evaluation.inception_weights: 'none' (FD only) or '' (the default location) or a path",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--cfg_w", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0])
  p.add_argument("--auto_w", type=float, nargs="+", default=[0.2, 0.5, 1.0])
  p.add_argument("--small_w", type=float, nargs="+", default=None, help="default: --auto_w")
  p.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
  p.add_argument("--report_only", action="store_true", help="no sampling: report the cells present")
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "autoguidance"))
  args = p.parse_args(argv)
  args.argv = "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
  from cfg_jax import config_lib, models

  start = time.time()
  main_cfg = config_lib.load_config(args.config)
  stem = os.path.splitext(args.config)[0]
  args.small_config = args.small_config or f"{stem}_guide.py"
  if args.main_step is None:
    args.main_step = main_cfg.training.num_train_steps
  args.early_step = args.early_step or [main_cfg.training.num_train_steps // 4]
  args.num_steps, args.p_uncond = main_cfg.sampling.num_steps, main_cfg.guidance.p_uncond
  n_ref = (
    main_cfg.evaluation.reference_num_examples
    if args.reference_examples is None
    else args.reference_examples
  )
  args.reference_text = "the whole train split" if n_ref <= 0 else f"{n_ref} train examples"
  names = method_names(args)
  if "auto_small" in names:
    if not args.small_guide:
      raise SystemExit("--methods includes auto_small: give its workdir as --small_guide.")
    small_cfg = config_lib.load_config(args.small_config)
    shape = models.image_shape(main_cfg)
    count = lambda c: models.count_params(models.create_model(c), shape)
    args.small_param_ratio = count(small_cfg) / count(main_cfg)
    args.small_desc = (
      f"{small_cfg.model.ch / main_cfg.model.ch:.2g}× width, "
      f"{small_cfg.training.num_train_steps / main_cfg.training.num_train_steps:.2g}× steps"
    )
  results, feats, evaluator = {}, {}, None
  for name in names:
    rows, f, evaluator = evaluate_method(name, args)
    results[name] = {"rows": rows}
    feats.update({(name, v): x for v, x in f.items()})
  common.check_paired(feats)
  boot = common.paired_bootstrap(feats, evaluator, rounds=args.rounds, seed=args.seed)
  for name in names:
    results[name]["boot"] = {
      m: {k[1]: b[k] for k in feats if k[0] == name} for m, b in boot.items()
    }
  seconds = time.time() - start
  text = report(results, args, seconds)
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".md", "w") as f:
    f.write(text)
  with open(args.out + ".json", "w") as f:
    json.dump(
      {
        name: {
          "rows": res["rows"],
          **{
            ("bootstrap_std" if m == "fd" else f"bootstrap_std_{m}"): {
              str(k): float(v.std()) for k, v in b.items()
            }
            for m, b in res["boot"].items()
          },
        }
        for name, res in results.items()
      },
      f,
      indent=1,
    )


if __name__ == "__main__":
  main()
