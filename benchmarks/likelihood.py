"""Bits/dim of the digits test split under the probability-flow ODE, over w, for trained models.

    python -m benchmarks.likelihood --model 0.1=DIR1 --model 0.5=DIR2 [--num_examples 100]
    python -m benchmarks.likelihood --model 0.1=DIR1 --interpolation docs/likelihood_slerp.png
    python -m benchmarks.likelihood --model 0.1=DIR1 --model 0.5=DIR2 --collect  # tables only

Runs `--mode=likelihood`'s code (`cfg_jax.jobs.likelihood`) on each model's latest checkpoint
(configs/digits.py with its p_uncond; results also land in DIR/likelihood/) and writes the table
to benchmarks/results/likelihood.md and .json (`--collect`: from the rows that `--mode=likelihood`
already wrote). `--interpolation` instead draws slerp paths in z between two test digits of one
class, encoded and decoded at several w.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks.common import REPO


def load_config(p_uncond: float, args):
  from cfg_jax import config_lib

  c = config_lib.load_config(os.path.join(REPO, "configs", "digits.py"))
  c.guidance.p_uncond = p_uncond
  s = c.likelihood
  s.w_values = tuple(args.w)
  s.num_examples = args.num_examples
  s.batch_size = args.batch_size
  s.rtol = s.atol = args.tol
  s.divergence = args.divergence
  s.num_probes = args.num_probes
  s.elbo_num_logsnrs = args.elbo_num_logsnrs
  return c


def markdown(results: list[dict], command: str) -> str:
  rows = results[0]["rows"]
  r0 = rows[0]
  st = r0["settings"]
  lines = [
    "# Bits/dim of the digits test split under the probability-flow ODE",
    "",
    f"`{command}`",
    "",
    f"Models: configs/digits.py, 1,500 steps, EMA params. The first {r0['num_examples']} images "
    f"of the test split (uniformly dequantized, 256 levels: docs/likelihood.md). Solver "
    f"{st['solver']} at rtol = atol = {st['rtol']:g}, divergence {st['divergence']}"
    f" (K = {int(st['num_probes'])}); ELBO with {int(st['elbo_num_logsnrs'])} stratified λ per "
    "image. ± is the standard error of the mean over images (image spread and probe noise).",
    "",
    "| p_uncond | w | ODE bits/dim | ELBO bits/dim | NFE (mean / max) | s / image | converged |",
    "|---|---|---|---|---|---|---|",
  ]
  for res in results:
    for r in res["rows"]:
      lines.append(
        f"| {res['p_uncond']:g} | {r['w']:g} | {r['bpd_all']:.3f} ± {r['bpd_se_all']:.3f} | "
        f"{r['elbo_bpd_all']:.3f} ± {r['elbo_bpd_se_all']:.3f} | {r['nfe_mean']:.0f} / "
        f"{r['nfe_max']} | {r['seconds_per_image']:.2f} | {r['converged']:.2f} |"
      )
  lines += ["", "Per class (ODE bits/dim):", ""]
  classes = sorted(
    {
      int(k[len("bpd_class") :])
      for res in results
      for k in res["rows"][0]
      if k.startswith("bpd_class")
    }
  )
  lines.append("| p_uncond | w | " + " | ".join(str(c) for c in classes) + " |")
  lines.append("|---|---|" + "---|" * len(classes))
  for res in results:
    for r in res["rows"]:
      cells = " | ".join(f"{r.get(f'bpd_class{c}', float('nan')):.2f}" for c in classes)
      lines.append(f"| {res['p_uncond']:g} | {r['w']:g} | {cells} |")
  compile_s = ", ".join(f"{res['rows'][0]['compile_seconds']:.0f}" for res in results)
  lines += [
    "",
    f"One compile per model for the whole w sweep ({compile_s} s). Machine: "
    f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (times are wall "
    "clock under that load).",
    "",
  ]
  return "\n".join(lines)


def interpolation(args) -> None:
  """Rows: w; columns: decode(slerp(encode(x0), encode(x1), t)) for t in [0, 1]."""
  import jax
  import jax.numpy as jnp
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  from cfg_jax import likelihood, models, sampling, train_state, validation
  from cfg_jax import sharding as sharding_lib
  from cfg_jax.data import pipeline

  p_uncond, workdir = args.model[0].split("=", 1)
  config = load_config(float(p_uncond), args)
  validation.validate(config)
  mesh = sharding_lib.make_mesh_from_config(config)
  params, _ = train_state.restore_params(config, workdir, mesh, gather=True)
  eps_fn = sampling.unet_eps_fn(models.create_model(config).apply, params)
  x, labels = pipeline.eval_arrays(config.data)
  idx = np.flatnonzero(labels == args.digit)[:2]
  settings = likelihood.LikelihoodConfig.from_config(config)
  null = config.data.num_classes
  t = jnp.linspace(0.0, 1.0, args.steps)
  w_values = tuple(args.interp_w)

  @jax.jit
  def path(x2, w):
    lab = jnp.full((2,), args.digit, jnp.int32)
    z = likelihood.encode(eps_fn, x2, labels=lab, w=w, null_label=null, config=settings)
    zs = likelihood.slerp(z[0], z[1], t)
    lab_t = jnp.full((t.shape[0],), args.digit, jnp.int32)
    return likelihood.decode(eps_fn, zs, labels=lab_t, w=w, null_label=null, config=settings)

  fig = Figure(figsize=(0.8 * (args.steps + 2), 0.9 * len(w_values)), layout="constrained")
  axes = fig.subplots(len(w_values), args.steps + 2, squeeze=False)
  for row, w in enumerate(w_values):
    out = np.asarray(path(jnp.asarray(x[idx]), jnp.float32(w)))
    panels = [x[idx[0]]] + list(out) + [x[idx[1]]]
    for col, img in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(np.clip(img[..., 0], -1, 1), cmap="gray", vmin=-1, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(f"w = {w:g}", fontsize=8)
      if row == 0:
        title = "x₀" if col == 0 else "x₁" if col == args.steps + 1 else f"t={t[col - 1]:.2f}"
        ax.set_title(title, fontsize=7)
  fig.suptitle(
    f"slerp in z = encode(x, c={args.digit}, w) between two test digits, decoded at the same w "
    f"(p_uncond {p_uncond}; outer columns: the real digits)",
    fontsize=8,
  )
  FigureCanvasAgg(fig).print_figure(args.interpolation, dpi=110)
  print(f"wrote {args.interpolation}")


def collect(workdir: str, args) -> list[dict]:
  """The newest row of `workdir`'s results for each w of --w with --num_examples images (-1: the
  most images of any row) at rtol = atol = --tol."""
  from cfg_jax.jobs import likelihood as likelihood_job

  with open(likelihood_job.results_path(workdir)) as f:
    rows = [json.loads(line) for line in f if json.loads(line)["settings"]["rtol"] == args.tol]
  n = args.num_examples if args.num_examples > 0 else max(r["num_examples"] for r in rows)
  newest = {r["w"]: r for r in rows if r["num_examples"] == n}
  return [newest[w] for w in args.w]


def main() -> None:
  from cfg_jax.jobs import likelihood as likelihood_job

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", action="append", required=True, help="P_UNCOND=WORKDIR")
  parser.add_argument("--w", type=float, nargs="+", default=[-1.0, 0.0, 0.3, 1.0, 3.0])
  parser.add_argument("--num_examples", type=int, default=-1)
  parser.add_argument("--batch_size", type=int, default=50)
  parser.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol")
  parser.add_argument("--divergence", default="hutchinson")
  parser.add_argument("--num_probes", type=int, default=1)
  parser.add_argument("--elbo_num_logsnrs", type=int, default=32)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "likelihood"))
  parser.add_argument(
    "--collect",
    action="store_true",
    help="only tabulate the rows each workdir's likelihood/results.jsonl already holds for --w",
  )
  parser.add_argument("--interpolation", default="", help="PNG path: draw slerp paths instead")
  parser.add_argument("--digit", type=int, default=3)
  parser.add_argument("--steps", type=int, default=7)
  parser.add_argument("--interp_w", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 3.0])
  args = parser.parse_args()
  if args.interpolation:
    interpolation(args)
    return

  results = []
  for spec in args.model:
    p_uncond, workdir = spec.split("=", 1)
    start = time.perf_counter()
    if args.collect:
      rows = collect(workdir, args)
    else:
      rows = likelihood_job.run(load_config(float(p_uncond), args), workdir)
    results.append({"p_uncond": float(p_uncond), "rows": rows})
    print(f"p_uncond {p_uncond}: {time.perf_counter() - start:.0f} s")
  command = "python -m benchmarks.likelihood " + " ".join(
    a if "=" not in a else a.split("=")[0] + "=DIR" for a in sys.argv[1:]
  )
  with open(args.out + ".json", "w") as f:
    json.dump({"command": command, "results": results}, f, indent=1, sort_keys=True)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(results, command))
  print(f"wrote {args.out}.md")


if __name__ == "__main__":
  main()
