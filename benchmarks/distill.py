"""Guided distillation measured: the teacher against its distilled students, side by side in one run.

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/distill --mode=distill \
        --config.distill.teacher_workdir=runs/digits --config.distill.start_num_steps=33 \
        --config.distill.rounds=3 --config.distill.stage1_steps=3000 \
        --config.distill.round_steps=1000 --config.distill.learning_rate=5e-4
    python -m benchmarks.distill --teacher_workdir runs/digits --workdir runs/distill \
        --stage1_steps 3000 --round_steps 1000 --rounds 3 --start_num_steps 33 --num_samples 500

Samples the same class-balanced labels with the same noise keys from the guided teacher (T steps,
2B per forward), the teacher with DDIM at the first shown round's step count, the stage-1 student
(T steps, B per forward) and the last two progressive rounds (DDIM, B per forward); reports digits-classifier FD /
IS / class accuracy per w and the wall time of sampling (compiled beforehand, 1 process) in
benchmarks/results/distill.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from benchmarks.common import REPO

W_VALUES = (0.0, 1.0, 3.0)


@dataclasses.dataclass
class Model:
  name: str
  config: object
  workdir: str


def _measure(model: Model, *, labels, w_values, net, ref) -> dict:
  """Per w: metrics and seconds of sampling `labels` (after a compile on one batch)."""
  import jax
  import numpy as np

  from cfg_jax import models, sampling, sampling_runner, train_state
  from cfg_jax import sharding as sharding_lib
  from cfg_jax.evaluation import features

  c = model.config
  mesh = sharding_lib.make_mesh_from_config(c)
  scfg = sampling.SamplerConfig.from_config(c)
  params, step = train_state.restore_params(c, model.workdir, mesh, use_ema=True, gather=True)
  sampler = sampling_runner.make_sampler(
    models.create_model(c).apply,
    shape=models.image_shape(c),
    null_label=c.data.num_classes,
    config=scfg,
    mesh=mesh,
  )
  rng = jax.random.fold_in(jax.random.key(c.seed), 3)
  gen = lambda labels, w: sampling_runner.generate(
    sampler, params, rng, labels=labels, w=w, batch_size=c.evaluation.batch_size, mesh=mesh
  )
  gen(labels[: c.evaluation.batch_size], 0.0)  # compile
  out = {"step": step, "settings": scfg.describe(), "rows": {}}
  for w in w_values:
    start = time.time()
    x = gen(labels, w)
    seconds = time.time() - start
    feats, logits = net.apply(features.quantize(x))
    m = features.sample_metrics(feats, logits, labels, net, ref, pr_k=c.evaluation.pr_k)
    out["rows"][w] = {**m, "seconds": seconds}
    out.setdefault("features", {})[w] = np.asarray(feats)
    print(f"{model.name} w={w:g}: {m} {seconds:.1f}s", flush=True)
  return out


def _bootstrap(results: dict, ref: dict, rounds: int) -> dict:
  """Paired bootstrap of every (model, w) FD: sample i shares its label and noise key across
  models, so one resampled index set per round serves all and differences get their own spread."""
  from cfg_jax.evaluation import metrics

  feats = {(n, w): f for n, r in results.items() for w, f in r.pop("features").items()}
  return metrics.bootstrap_frechet_distances(feats, ref["mu"], ref["sigma"], num_rounds=rounds)


def main() -> None:
  import json

  import numpy as np

  from cfg_jax import config_lib, students, validation
  from cfg_jax.evaluation import features

  parser = argparse.ArgumentParser()
  parser.add_argument("--teacher_workdir", required=True)
  parser.add_argument("--workdir", required=True, help="the --mode=distill workdir")
  parser.add_argument("--stage1_steps", type=int, required=True)
  parser.add_argument("--round_steps", type=int, required=True)
  parser.add_argument("--rounds", type=int, required=True)
  parser.add_argument("--start_num_steps", type=int, required=True)
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--bootstrap_rounds", type=int, default=200)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "distill.md"))
  args = parser.parse_args()
  config = config_lib.load_config(os.path.join(REPO, "configs", "digits.py"))
  with config.unlocked():
    d = config.distill
    d.stage1_steps, d.round_steps = args.stage1_steps, args.round_steps
    d.rounds, d.start_num_steps = args.rounds, args.start_num_steps
  validation.validate(config)
  start = time.time()
  round_steps = [students.num_steps_of_round(d, k) for k in range(1, d.rounds + 1)]
  models = [Model(f"teacher, guided, T={config.sampling.num_steps}", config, args.teacher_workdir)]
  shown = range(max(1, d.rounds - 1), d.rounds + 1)  # the last two rounds
  c = students.student_config(config, "round_1")  # DDIM η=0 at T of the first shown round
  with c.unlocked():
    c.distill.student, c.sampling.num_steps = "", round_steps[shown[0] - 1]
  models.append(Model(f"teacher, guided, DDIM T={c.sampling.num_steps}", c, args.teacher_workdir))
  models.append(
    Model(
      f"stage-1 student, T={config.sampling.num_steps}",
      students.student_config(config, students.STAGE1),
      os.path.join(args.workdir, students.STAGE1),
    )
  )
  for k in shown:
    name, t = students.round_name(k), round_steps[k - 1]
    models.append(
      Model(
        f"round {k} student, DDIM T={t}",
        students.student_config(config, name),
        os.path.join(args.workdir, name),
      )
    )
  net = features.feature_net(config)
  ref = features.reference_features(config, net, args.workdir)
  labels = np.resize(np.arange(config.data.num_classes, dtype=np.int32), args.num_samples)
  results = {
    m.name: _measure(m, labels=labels, w_values=W_VALUES, net=net, ref=ref) for m in models
  }
  minutes = (time.time() - start) / 60
  boot = _bootstrap(results, ref, args.bootstrap_rounds)
  base = results[models[0].name]
  lines = [
    "# Guided distillation on the digits default",
    "",
    f"`python -m benchmarks.distill --teacher_workdir <digits workdir> --workdir <distill "
    f"workdir> --stage1_steps {d.stage1_steps} --round_steps {d.round_steps} --rounds "
    f"{d.rounds} --start_num_steps {d.start_num_steps} --num_samples {args.num_samples}`: "
    f"{minutes:.0f} min on {platform.machine()} with {os.cpu_count()} CPU cores. Each cell: "
    f"{args.num_samples} class-balanced samples, the same labels and noise keys for every "
    "model; digits-classifier FD / IS / class accuracy (not Inception). FD ± is the std of a "
    f"paired bootstrap ({args.bootstrap_rounds} rounds over the samples, the same rounds for "
    "every cell). `evals` = network evaluations per sample, `batch` = images per forward for a "
    "batch of B samples; `time` = seconds to sample all of them at that w (compiled "
    "beforehand, the models one after another in one process), `speed-up` = the guided "
    "teacher's time / this row's, averaged over w.",
    "",
    "| model | ckpt step | evals | batch | "
    + " | ".join(f"w={w:g}: FD / IS / acc / time" for w in W_VALUES)
    + " | speed-up |",
    "|---|---|---|---|" + "---|" * len(W_VALUES) + "---|",
  ]
  for name, r in results.items():
    s = r["settings"]
    batch = "2B" if s["guided_evals"] else "B"
    cells = [
      f"{r['rows'][w]['fd']:.2f} ± {boot[name, w].std():.2f} / {r['rows'][w]['is']:.2f} / "
      f"{r['rows'][w]['class_accuracy']:.3f} / {r['rows'][w]['seconds']:.1f}s"
      for w in W_VALUES
    ]
    r["speed_up"] = float(
      np.mean([base["rows"][w]["seconds"] / r["rows"][w]["seconds"] for w in W_VALUES])
    )
    lines.append(
      f"| {name} | {r['step']} | {s['network_evals']} | {batch} | "
      + " | ".join(cells)
      + f" | {r['speed_up']:.1f}x |"
    )
  lines += [
    "",
    "Against the guided teacher at the same w (paired bootstrap): ΔFD = FD(model) − FD(teacher) ± "
    "its std, and FD(model) / FD(teacher).",
    "",
    "| model | " + " | ".join(f"w={w:g}: ΔFD / ratio" for w in W_VALUES) + " |",
    "|---|" + "---|" * len(W_VALUES),
  ]
  for name, r in list(results.items())[1:]:
    cells = []
    for w in W_VALUES:
      delta = boot[name, w] - boot[models[0].name, w]
      ratio = r["rows"][w]["fd"] / base["rows"][w]["fd"]
      r["rows"][w].update(fd_std=float(boot[name, w].std()), fd_delta=float(delta.mean()))
      r["rows"][w].update(fd_delta_std=float(delta.std()), fd_ratio=float(ratio))
      cells.append(
        f"{r['rows'][w]['fd'] - base['rows'][w]['fd']:+.2f} ± {delta.std():.2f} / {ratio:.2f}"
      )
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  with open(args.out, "w") as f:
    f.write("\n".join(lines))
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(
      {n: {**r, "rows": {str(w): v for w, v in r["rows"].items()}} for n, r in results.items()},
      f,
      indent=1,
    )
  print("\n".join(lines))


if __name__ == "__main__":
  main()
