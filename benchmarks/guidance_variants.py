"""Guidance variants side by side on one trained digits model, through the evaluation job.

    python -m benchmarks.guidance_variants --workdir runs/paper_small_scale/p_uncond_0.1 \
        --uncond_workdir runs/guidance_variants/p_uncond_1

Takes a workdir trained by `configs/digits.py` (e.g. by benchmarks/paper_small_scale.py), runs
`--mode=evaluate` once per variant (the paper's ancestral sampler, DDIM, a guidance interval, CFG
rescale, dynamic thresholding, and classifier guidance) over the same w values and sample count,
and writes a markdown table of digits-classifier metrics to benchmarks/results/guidance_variants.md.

Classifier guidance (Dhariwal & Nichol) needs a noise-conditional classifier and, for its
unconditional form, a model trained with p_uncond = 1; the script trains what is missing (the
classifier into `<workdir>/classifier` with --mode=train_classifier, the p_uncond = 1 model into
`--uncond_workdir`). Its column for w uses the classifier scale s that matches w:
ε(z, c) − s·σ·∇log p(c|z) with s = w on the conditional model is ε(z,c) + w·(ε(z,c) − ε(z,∅)) for
exact densities, and ε(z, ∅) − s·σ·∇log p(c|z) with s = 1 + w on the unconditional one is too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from benchmarks.common import REPO

W_VALUES = (0.0, 0.3, 1.0, 3.0)
NUM_SAMPLES = 1000
VARIANTS = {
  "ancestral v=0.3 (paper)": [],
  "DDIM eta=0": ["--config.sampling.sampler=ddim", "--config.sampling.eta=0.0"],
  "interval λ∈[-3,3]": ["--config.sampling.guidance_interval=(-3.,3.)"],
  "rescale φ=0.7": ["--config.sampling.rescale_phi=0.7"],
  "dynamic thresholding p=0.995": ["--config.sampling.thresholding=dynamic"],
}
# Classifier guidance: (scale offset s - w, uses the p_uncond = 1 model).
CLASSIFIER_VARIANTS = {
  "classifier guidance, conditional model, s = w": (0.0, False),
  "classifier guidance, p_uncond=1 model, s = 1 + w": (1.0, True),
}


def _tuple(values) -> str:
  return "(" + ",".join(f"{v:g}" for v in values) + ",)"


def _run(cmd: list[str], commands: list[str]) -> None:
  commands.append(" ".join(shlex.quote(c) for c in ["python", *cmd[1:]]))
  print("$", commands[-1], flush=True)
  subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _has_checkpoint(directory: str) -> bool:
  return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def main() -> None:

  from cfg_jax.evaluation import results

  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a trained digits workdir")
  parser.add_argument(
    "--uncond_workdir",
    required=True,
    help="workdir of the p_uncond = 1 digits model (trained here if missing)",
  )
  parser.add_argument(
    "--out", default=os.path.join(REPO, "benchmarks", "results", "guidance_variants.md")
  )
  args = parser.parse_args()
  commands, rows = [], {}
  start = time.time()
  base = [sys.executable, "-m", "cfg_jax.main", "--config=configs/digits.py"]
  if not _has_checkpoint(os.path.join(args.workdir, "classifier", "checkpoints")):
    _run([*base, f"--workdir={args.workdir}", "--mode=train_classifier"], commands)
  if not _has_checkpoint(os.path.join(args.uncond_workdir, "checkpoints")):
    _run([*base, f"--workdir={args.uncond_workdir}", "--config.guidance.p_uncond=1.0"], commands)
  runs = {
    name: (args.workdir, [f"--config.evaluation.w_values={_tuple(W_VALUES)}", *extra])
    for name, extra in VARIANTS.items()
  }
  for name, (offset, uncond) in CLASSIFIER_VARIANTS.items():
    extra = [
      "--config.evaluation.guidance=classifier",
      f"--config.evaluation.classifier_scales={_tuple(w + offset for w in W_VALUES)}",
    ]
    if uncond:
      extra += [
        "--config.guidance.p_uncond=1.0",
        "--config.evaluation.classifier_model_labels=null",
        f"--config.evaluation.classifier_workdir={args.workdir}",
      ]
    runs[name] = (args.uncond_workdir if uncond else args.workdir, extra)
  for name, (workdir, extra) in runs.items():
    before = len(results.load_results(workdir))
    _run(
      [
        *base,
        f"--workdir={workdir}",
        "--mode=evaluate",
        f"--config.evaluation.num_samples={NUM_SAMPLES}",
        *extra,
      ],
      commands,
    )
    new = results.load_results(workdir)[before:]
    offset = CLASSIFIER_VARIANTS.get(name, (0.0, False))[0]
    rows[name] = [
      {**r, "w": round(results.guidance_strength(r) - offset, 6)} for r in new
    ]  # column = matching w
  minutes = (time.time() - start) / 60
  out = [
    "# Guidance variants on the digits default (p_uncond = 0.1, T = 64)",
    "",
    f"`python -m benchmarks.guidance_variants --workdir <trained digits workdir> --uncond_workdir <dir>`: {minutes:.0f} "
    f"min on {platform.machine()} with {os.cpu_count()} CPU cores. Each cell: {NUM_SAMPLES} "
    "class-balanced samples (same noise keys for every variant and w); digits-classifier "
    "metrics (not Inception FID / IS). `evals` = network evaluations per sample, `guided` = "
    "how many of them ran the batched [z, z] forward. Classifier-guidance rows sit in the column of "
    "the w their scale s matches (s = w on the conditional model, s = 1 + w on the p_uncond = 1 "
    "model; see the script's docstring); their evals are the diffusion model's, each with one "
    "classifier forward and backward on top.",
    "",
    "| variant | evals / guided | "
    + " | ".join(f"w={w:g}: FD / IS / acc" for w in W_VALUES)
    + " |",
    "|---|---|" + "---|" * len(W_VALUES),
  ]
  for name, rs in rows.items():
    by_w = {r["w"]: r for r in rs}
    settings = json.loads(rs[0]["sampler_settings"])
    cells = [
      f"{by_w[w]['fd']:.2f} / {by_w[w]['is']:.3f} / {by_w[w]['class_accuracy']:.3f}"
      for w in W_VALUES
    ]
    out.append(
      f"| {name} | {settings['network_evals']} / {settings['guided_evals']} | "
      + " | ".join(cells)
      + " |"
    )
  out += ["", "## Commands", "", "```bash", *commands, "```", ""]
  with open(args.out, "w") as f:
    f.write("\n".join(out))
  print("\n".join(out))


if __name__ == "__main__":
  main()
