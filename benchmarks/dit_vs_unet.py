"""The DiT against the U-Net on MNIST at equal CPU training wall time (#26).

    python -m benchmarks.dit_vs_unet                      # ~18 min on a 2-core CPU
    python -m benchmarks.dit_vs_unet --report_only        # the table from the cached cases
    python -m benchmarks.dit_vs_unet --train_seconds 360 --inception_weights= \
        --reference_examples 1000 --num_samples 200 --root runs/dit_vs_unet_fid   # + Inception FID

Two cases, each the real command line: configs/mnist.py (the ADM U-Net, 345,713 parameters) and
configs/mnist_dit.py (a DiT of width 64, depth 4, patch 2: 196 tokens, 328,964 parameters), with
the same data, optimizer, batch and sampler. Each trains (`python -m cfg_jax.main`, one device)
for `--train_seconds` of wall time counted from the end of its first (compiling) step, then gets
SIGTERM, which checkpoints and stops it (the preemption path). From its TensorBoard events: steps
reached, images/s of training, and the loss curve. XLA's FLOP count of the same jitted train step
(`training.make_train_step`, from the lowered HLO: nothing compiled here) times the step rate is
the achieved FLOP/s, given as a fraction of the float32 matmul peak measured here (a jnp.dot of
2048², before and after the runs; the higher counts). Then `--mode=evaluate` of each checkpoint
with the MNIST classifier of evaluation (evaluation.inception_weights=none; its Fréchet distance,
FD, is not Inception FID) at w = 0, 1, 3 with T = the config's, n class-balanced samples per w
from the same noise and labels for both models (the same seed), so one paired bootstrap over
the samples gives every FD's spread and the spread of FD(DiT) − FD(U-Net). With
`--inception_weights` ('' = the default location) the same cells also get the real Inception FID
against `--reference_examples` train images. The DiT case reuses the U-Net case's cached
reference statistics, and `--reference_cache DIR` seeds both from another workdir's (the same
split through the same network gives the same file).

Cached: a case whose workdir holds `case.json` is not trained again, and cells already in its
results.jsonl are not sampled again (an interrupted training run is started afresh: its timing
would be broken). Workdirs under `--root` (default runs/dit_vs_unet); report to
benchmarks/results/dit_vs_unet.{md,json}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from benchmarks import common
from benchmarks.common import REPO

CASES = {"unet": "configs/mnist.py", "dit": "configs/mnist_dit.py"}
LABELS = {"unet": "U-Net (configs/mnist.py)", "dit": "DiT (configs/mnist_dit.py)"}
FIRST_STEP = re.compile(r"\] step 1/\d+:")
LOSS_WINDOW = 10  # the final loss is the mean of the last this many steps' losses


def key(w: float) -> str:
  """The JSON key of a guidance strength w."""
  return f"{w:g}"


def case_config(name: str):
  from cfg_jax import config_lib

  return config_lib.load_config(os.path.join(REPO, CASES[name]))


def cli(name: str, workdir: str, *args: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "cfg_jax.main",
    f"--config={CASES[name]}",
    f"--workdir={workdir}",
    *args,
  ]


def shown(cmd: list[str]) -> str:
  """A command as the results show it: `python ...`, paths relative to the repository."""
  return " ".join(["python", *cmd[1:]]).replace(REPO + os.sep, "")


def one_device_env() -> dict[str, str]:
  """This environment without fake-device flags: each case runs on the one CPU device."""
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags).strip()
  return env


def read_curve(workdir: str) -> list[tuple[int, float, float]]:
  """[(step, wall time, loss)] of every logged training step (TensorBoard events)."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  return [
    (e.step, e.wall_time, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))))
    for e in acc.Tensors("train/loss")
  ]


def train_case(name: str, args) -> dict:
  """Trains one case for args.train_seconds after its first step (or reads its case.json)."""
  workdir = os.path.join(args.root, name)
  case_path = os.path.join(workdir, "case.json")
  if os.path.exists(case_path):
    with open(case_path) as f:
      return json.load(f)
  if args.report_only:
    raise SystemExit(f"--report_only: no {case_path}; run without it first.")
  shutil.rmtree(workdir, ignore_errors=True)  # an interrupted run: start afresh
  os.makedirs(workdir)
  cmd = cli(
    name,
    workdir,
    "--config.training.num_train_steps=1000000",  # stopped by SIGTERM after the budget
    "--config.training.log_every_steps=1",
    "--config.training.checkpoint_every_steps=1000000",
    "--config.training.sample_every_steps=0",
  )
  load = os.getloadavg()
  print(f"{name}: training for {args.train_seconds:g} s: {' '.join(cmd[1:])}", flush=True)
  start = time.time()
  proc = subprocess.Popen(
    cmd,
    cwd=REPO,
    env=one_device_env(),
    stderr=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    text=True,
  )
  timer, first_step_at, log = None, None, []
  for line in proc.stderr:
    log.append(line)
    if first_step_at is None and FIRST_STEP.search(line):
      first_step_at = time.time()
      timer = threading.Timer(args.train_seconds, proc.send_signal, (signal.SIGTERM,))
      timer.start()
  proc.wait()
  if timer is not None:
    timer.cancel()
  with open(os.path.join(workdir, "train.log"), "w") as f:
    f.writelines(log)
  if proc.returncode != 0 or first_step_at is None:
    raise SystemExit(f"{name}: training failed (exit {proc.returncode}):\n{''.join(log[-30:])}")
  curve = read_curve(workdir)
  (s1, t1, _), (sn, tn, _) = curve[0], curve[-1]
  batch = case_config(name).training.batch_size
  case = {
    "config": CASES[name],
    "command": shown(cmd),
    "train_seconds_budget": args.train_seconds,
    "process_seconds": time.time() - start,
    "compile_and_first_step_s": first_step_at - start,
    "steps": sn,
    "timed_steps": sn - s1,
    "timed_seconds": tn - t1,
    "images_per_sec": (sn - s1) * batch / (tn - t1),
    "steps_per_sec": (sn - s1) / (tn - t1),
    "batch_size": batch,
    "final_loss": float(np.mean([x[2] for x in curve[-LOSS_WINDOW:]])),
    "curve": curve,
    "loadavg_before": load,
    "loadavg_after": os.getloadavg(),
  }
  with open(case_path, "w") as f:
    json.dump(case, f, indent=1)
  return case


def train_step_flops(name: str) -> tuple[float, int]:
  """(XLA's FLOPs of one train step from its lowered HLO, the parameter count) of a case."""
  import jax
  import jax.numpy as jnp

  from cfg_jax import models, sharding, train_state, training

  config = case_config(name)
  shape, b = models.image_shape(config), config.training.batch_size
  mesh = sharding.make_mesh(1)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, state_sharding = training.create_train_state(config, model, tx, mesh, shape)
  step = training.make_train_step(model, tx, config, mesh, state_sharding)
  batch = {
    "image": jax.ShapeDtypeStruct((b, *shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((b,), jnp.int32),
  }
  cost = step.lower(state, batch, jax.random.key(0)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]), int(sum(x.size for x in jax.tree.leaves(state.params)))


def evaluate_case(name: str, case: dict, args) -> tuple[list[dict], dict[float, dict]]:
  """(results rows at args.w, {w: saved features}) of a case's final checkpoint."""
  from cfg_jax.evaluation import results

  workdir = os.path.join(args.root, name)
  step, n = case["steps"], args.num_samples
  t = case_config(name).sampling.num_steps

  def rows() -> dict[float, dict]:
    return {
      r["w"]: r
      for r in results.load_results(workdir)
      if (r["step"], r["num_samples"], r["num_steps"], r["guidance"]) == (step, n, t, "cfg")
    }

  def path(w):
    return results.features_path(
      workdir, step=step, num_steps=t, guidance="cfg", w=w, num_samples=n
    )

  missing = [w for w in args.w if w not in rows() or not os.path.exists(path(w))]
  if missing and not args.report_only:
    seed_references(args.reference_cache, workdir)
    if name != "unet":  # the U-Net case (evaluated first) has the same split's statistics
      seed_references(os.path.join(args.root, "unet"), workdir)
    cmd = cli(
      name,
      workdir,
      "--mode=evaluate",
      f"--config.evaluation.inception_weights={args.inception_weights}",
      f"--config.evaluation.reference_num_examples={args.reference_examples}",
      "--config.evaluation.save_features=True",
      f"--config.evaluation.w_values=({','.join(f'{w:g}.' if w == int(w) else f'{w:g}' for w in args.w)})",
      f"--config.evaluation.num_samples={n}",
      f"--config.evaluation.batch_size={n}",
      f"--config.evaluation.checkpoint_step={step}",
    )
    print(f"{name}: evaluating: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=one_device_env(), capture_output=True, text=True)
    if proc.returncode != 0:
      raise SystemExit(f"{name}: evaluation failed:\n{proc.stderr[-3000:]}")
    case["evaluate_seconds"] = time.time() - start
    case["evaluate_command"] = shown(cmd)
    with open(os.path.join(workdir, "case.json"), "w") as f:
      json.dump(case, f, indent=1)
  have = rows()
  feats = {}
  for w in args.w:
    with np.load(path(w)) as f:
      feats[w] = {k: f[k] for k in f.files}
  return [have[w] for w in args.w], feats


def seed_references(source: str, workdir: str) -> None:
  """Copies the cached reference statistics of workdir `source` into `workdir`'s eval/."""
  if not source:
    return
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  for path in glob.glob(os.path.join(source, "eval", "reference_*.npz")):
    target = os.path.join(workdir, "eval", os.path.basename(path))
    if not os.path.exists(target):
      shutil.copyfile(path, target)


def references(args) -> dict[str, dict]:
  """{metric: the train split's statistics} from the U-Net case's evaluation cache: the MNIST
  classifier's ('fd') and, with Inception weights, Inception's ('fid')."""
  n = args.reference_examples
  out = {}
  for path in glob.glob(
    os.path.join(args.root, "unet", "eval", f"reference_*_mnist_train_{n}.npz")
  ):
    metric = "fid" if os.path.basename(path).startswith("reference_inception") else "fd"
    with np.load(path) as f:
      out[metric] = {k: f[k] for k in ("mu", "sigma")}
  if "fd" not in out or (args.inception_weights != "none") != ("fid" in out):
    raise SystemExit(f"no reference statistics of n = {n} in {args.root}/unet/eval/")
  return out


def report(data: dict) -> str:
  cases, boot, w_values = data["cases"], data["bootstrap"], data["w"]
  peak = data["peak_gflops"]
  lines = [
    "# DiT vs U-Net on MNIST at equal CPU training time",
    "",
    f"`{data['command']}` ({data['date']}; {data['machine']}; jax {data['versions']['jax']}; "
    f"the whole run {data['wall_s'] / 60:.1f} min, load average {data['loadavg_start']} at the "
    f"start, {data['loadavg_end']} at the end). Each model trains with the real command line "
    f"on one CPU device for {data['train_seconds']:g} s after its first (compiling) step, then "
    "is stopped by SIGTERM (checkpoint and exit); same data, optimizer (configs/mnist.py's: "
    "Adam 2e-3, batch 64, p_uncond 0.1, EMA 0.995) and sampler (ancestral, T = 32, v = 0.3). "
    f"Float32 matmul peak measured here: {peak['start']:.1f} GFLOP/s before, "
    f"{peak['end']:.1f} after (the fraction uses the higher). FD: the Fréchet distance of the "
    "MNIST classifier's features (the dataset classifier of `--mode=evaluate`; not Inception "
    "FID)" + (", FID: the real Inception FID," if "fid" in boot else "") + f" of n = "
    f"{data['num_samples']} class-balanced samples per w against {reference_text(data)}, ± the "
    f"std of a paired bootstrap ({data['rounds']} rounds; sample i of every cell shares its "
    "noise and label).",
    "",
    "| | " + " | ".join(LABELS[k] for k in cases) + " |",
    "|---|" + "---|" * len(cases),
  ]

  def row(title, fn):
    lines.append(f"| {title} | " + " | ".join(fn(k, c) for k, c in cases.items()) + " |")

  row("parameters", lambda k, c: f"{c['params']:,}")
  row("training wall time (after step 1)", lambda k, c: f"{c['timed_seconds']:.0f} s")
  row("compile + first step", lambda k, c: f"{c['compile_and_first_step_s']:.0f} s")
  row("steps reached", lambda k, c: f"{c['steps']}")
  row("training images/s", lambda k, c: f"{c['images_per_sec']:.1f}")
  row("XLA GFLOP per train step (batch 64)", lambda k, c: f"{c['flops_per_step'] / 1e9:.1f}")
  row("achieved GFLOP/s", lambda k, c: f"{c['gflops']:.1f}")
  row("fraction of the matmul peak", lambda k, c: f"{c['fraction_of_peak']:.2f}")
  row(f"final loss (mean of the last {LOSS_WINDOW} steps)", lambda k, c: f"{c['final_loss']:.3f}")
  common_step = min(c["steps"] for c in cases.values())
  row(
    f"loss at step {common_step} (mean of {LOSS_WINDOW} steps)",
    lambda k, c: f"{loss_at(c['curve'], common_step):.3f}",
  )
  for metric in metrics_of(boot):
    for w in w_values:
      row(
        f"{metric.upper()} at w = {w:g}",
        lambda k, c, w=w, m=metric: (
          f"{c['rows'][key(w)][m]:.1f} ± {np.std(boot[m][k][key(w)]):.1f}"
        ),
      )
  for w in w_values:
    row(
      f"class accuracy at w = {w:g}", lambda k, c, w=w: f"{c['rows'][key(w)]['class_accuracy']:.3f}"
    )
  row("evaluation wall time (3 w)", lambda k, c: f"{c.get('evaluate_seconds', float('nan')):.0f} s")
  for metric in metrics_of(boot):
    m = metric.upper()
    lines += [
      "",
      f"{m}(DiT) − {m}(U-Net), and {m}(w) − {m}(w = 0) of each model, paired over the same samples:",
      "",
    ]
    lines += [
      "| w | DiT − U-Net | P(DiT better) | U-Net: Δ vs w = 0 | DiT: Δ vs w = 0 |",
      "|---|---|---|---|---|",
    ]
    b = {k: {w: np.asarray(v) for w, v in x.items()} for k, x in boot[metric].items()}
    for w in w_values:
      d = b["dit"][key(w)] - b["unet"][key(w)]
      du, dd = (b[k][key(w)] - b[k][key(w_values[0])] for k in ("unet", "dit"))
      lines.append(
        f"| {w:g} | {d.mean():+.1f} ± {d.std():.1f} | {np.mean(d < 0):.2f} | "
        f"{du.mean():+.1f} ± {du.std():.1f} | {dd.mean():+.1f} ± {dd.std():.1f} |"
      )
  lines += ["", "Loss curve (mean loss of the steps in each minute of training):", ""]
  minutes = int(data["train_seconds"] // 60) + 1
  lines += [
    "| minute | " + " | ".join(LABELS[k] for k in cases) + " |",
    "|---|" + "---|" * len(cases),
  ]
  for m in range(minutes):
    cells = []
    for c in cases.values():
      t0 = c["curve"][0][1]
      xs = [loss for _, t, loss in c["curve"] if m * 60 <= t - t0 < (m + 1) * 60]
      cells.append(f"{np.mean(xs):.3f} ({len(xs)} steps)" if xs else "—")
    lines.append(f"| {m}–{m + 1} | " + " | ".join(cells) + " |")
  lines += ["", "## Reading", "", data["reading"], ""]
  return "\n".join(lines)


def metrics_of(boot: dict) -> list[str]:
  """The Fréchet metrics measured, the paper's first: ['fid', 'fd'] or ['fd']."""
  return [m for m in ("fid", "fd") if m in boot]


def reference_text(data: dict) -> str:
  n = data.get("reference_examples", -1)
  return "the 4,000-image train split" if n <= 0 else f"{n:,} train images"


def loss_at(curve, step: int) -> float:
  xs = [loss for s, _, loss in curve if step - LOSS_WINDOW < s <= step]
  return float(np.mean(xs))


def reading(cases: dict, boot: dict) -> str:
  """The reading of the measured figures (which way each comparison fell, from the data)."""
  u, d = cases["unet"], cases["dit"]
  metric = metrics_of(boot)[0]
  fd_d = np.asarray(boot[metric]["dit"]["0"]) - np.asarray(boot[metric]["unet"]["0"])
  p_better = float(np.mean(fd_d < 0))
  speed = d["images_per_sec"] / u["images_per_sec"]
  text = (
    f"On this CPU the DiT trained {speed:.2f}× the U-Net's images/s "
    f"({d['images_per_sec']:.1f} vs {u['images_per_sec']:.1f}) at "
    f"{d['fraction_of_peak']:.2f} vs {u['fraction_of_peak']:.2f} of the matmul peak, with "
    f"{d['flops_per_step'] / u['flops_per_step']:.2f}× the FLOPs per step: in the same time it "
    f"reached {d['steps']} steps to the U-Net's {u['steps']}, a final loss of "
    f"{d['final_loss']:.3f} vs {u['final_loss']:.3f}, and an {metric.upper()} at w = 0 "
    f"{'lower' if fd_d.mean() < 0 else 'higher'} by {abs(fd_d.mean()):.1f} ± {fd_d.std():.1f} "
    f"(DiT better in {100 * p_better:.0f}% of the paired rounds). "
  )
  if speed < 1.5 or d["fraction_of_peak"] < 2 * u["fraction_of_peak"]:
    text += (
      "The issue's hope (XLA:CPU runs matmuls at ~180 GFLOP/s and 3×3 convolutions at ~50, so a "
      "DiT of matmuls might train several times more network per second) does not hold at this "
      "size: the DiT's matmuls are small (width 64, 196 tokens, head width 16), and its "
      "attention, LayerNorms, modulation and patch reshapes are memory-bound."
    )
  else:
    text += "The DiT's matmuls use the CPU better than the U-Net's convolutions, as hoped."
  return text


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "runs", "dit_vs_unet"))
  p.add_argument("--train_seconds", type=float, default=270.0)
  p.add_argument("--num_samples", type=int, default=100)
  p.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 3.0])
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  p.add_argument("--inception_weights", default="none", help="'' = the default location")
  p.add_argument("--reference_examples", type=int, default=-1, help="-1: the whole train split")
  p.add_argument(
    "--reference_cache", default="", help="a workdir whose eval/reference_*.npz to reuse"
  )
  p.add_argument("--report_only", action="store_true", help="report the cached cases only")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "dit_vs_unet"))
  args = p.parse_args(argv)
  argv = sys.argv[1:] if argv is None else argv
  command = "python -m benchmarks.dit_vs_unet" + "".join(f" {a}" for a in argv)
  start, load_start = time.time(), os.getloadavg()
  from cfg_jax.evaluation import metrics

  peak_start = common.matmul_peak(2048, 8)["gflops"]
  cases = {}
  for name in CASES:
    case = train_case(name, args)
    for field in ("command", "evaluate_command"):  # cases cached before shown() existed
      if field in case:
        case[field] = case[field].replace(REPO + os.sep, "")
    case["flops_per_step"], case["params"] = train_step_flops(name)
    cases[name] = case
  feats = {}
  for name, case in cases.items():
    rows, f = evaluate_case(name, case, args)
    case["rows"] = {key(w): r for w, r in zip(args.w, rows)}
    feats.update({(name, w): x for w, x in f.items()})
  peak_end = common.matmul_peak(2048, 8)["gflops"]
  peak = max(peak_start, peak_end)
  for case in cases.values():
    case["gflops"] = case["flops_per_step"] * case["steps_per_sec"] / 1e9
    case["fraction_of_peak"] = case["gflops"] / peak
  common.check_paired(feats)
  boot = {}  # {metric: {case: {w: [FD of each paired bootstrap round]}}}
  for metric, ref in references(args).items():
    array = {"fd": "features", "fid": "inception"}[metric]
    fds = metrics.bootstrap_frechet_distances(
      {k: f[array] for k, f in feats.items()},
      ref["mu"],
      ref["sigma"],
      num_rounds=args.rounds,
      seed=args.seed,  # the same rounds for both metrics
    )
    boot[metric] = {name: {key(w): fds[(name, w)].tolist() for w in args.w} for name in CASES}
  data = {
    "benchmark": "dit_vs_unet",
    "command": command,
    "date": time.strftime("%Y-%m-%d"),
    "machine": common.machine(),
    "versions": common.versions(),
    "loadavg_start": ", ".join(f"{x:.1f}" for x in load_start),
    "loadavg_end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    "peak_gflops": {"start": peak_start, "end": peak_end},
    "train_seconds": args.train_seconds,
    "num_samples": args.num_samples,
    "reference_examples": args.reference_examples,
    "rounds": args.rounds,
    "w": args.w,
    "cases": cases,
    "bootstrap": boot,
    "wall_s": time.time() - start,
  }
  if args.report_only and os.path.exists(args.out + ".json"):  # keep the measured run's facts
    with open(args.out + ".json") as f:
      old = json.load(f)
    for field in ("command", "date", "machine", "loadavg_start", "loadavg_end", "wall_s"):
      data[field] = old[field]
  data["reading"] = reading(cases, boot)
  text = report(data)
  common.write_report(args.out, data, text)
  print(text)


if __name__ == "__main__":
  main()
