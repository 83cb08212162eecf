"""Guidance variants side by side on one trained digits model, through the evaluation job.

    python benchmarks/guidance_variants.py --workdir runs/paper_small_scale/p_uncond_0.1

Takes a workdir trained by `configs/digits.py` (e.g. by benchmarks/paper_small_scale.py), runs
`--mode=evaluate` once per variant (the paper's ancestral sampler, DDIM, a guidance interval, CFG
rescale, dynamic thresholding) over the same w values and sample count, and writes a markdown table
of digits-classifier metrics to benchmarks/results/guidance_variants.md.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W_VALUES = (0.0, 0.3, 1.0, 3.0)
NUM_SAMPLES = 1000
VARIANTS = {
    "ancestral v=0.3 (paper)": [],
    "DDIM eta=0": ["--config.sampling.sampler=ddim", "--config.sampling.eta=0.0"],
    "interval λ∈[-3,3]": ["--config.sampling.guidance_interval=(-3.,3.)"],
    "rescale φ=0.7": ["--config.sampling.rescale_phi=0.7"],
    "dynamic thresholding p=0.995": ["--config.sampling.thresholding=dynamic"],
}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a trained digits workdir")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "guidance_variants.md"))
  args = parser.parse_args()
  commands, rows = [], {}
  start = time.time()
  results = os.path.join(args.workdir, "eval", "results.jsonl")
  for name, extra in VARIANTS.items():
    cmd = [sys.executable, "-m", "cfg_jax.main", "--config=configs/digits.py",
           f"--workdir={args.workdir}", "--mode=evaluate",
           f"--config.evaluation.num_samples={NUM_SAMPLES}",
           "--config.evaluation.w_values=(" + ",".join(f"{w:g}" for w in W_VALUES) + ",)", *extra]
    commands.append(" ".join(shlex.quote(c) for c in ["python", *cmd[1:]]))
    print("$", commands[-1], flush=True)
    before = sum(1 for _ in open(results)) if os.path.exists(results) else 0
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(results) as f:
      rows[name] = [json.loads(line) for line in f][before:]
  minutes = (time.time() - start) / 60
  out = ["# Guidance variants on the digits default (p_uncond = 0.1, T = 64)", "",
         f"`python benchmarks/guidance_variants.py --workdir <trained digits workdir>`: {minutes:.0f} "
         f"min on {platform.machine()} with {os.cpu_count()} CPU cores. Each cell: {NUM_SAMPLES} "
         "class-balanced samples (same noise keys for every variant and w); digits-classifier "
         "metrics (not Inception FID / IS). `evals` = network evaluations per sample, `guided` = "
         "how many of them ran the batched [z, z] forward.", "",
         "| variant | evals / guided | " + " | ".join(f"w={w:g}: FD / IS / acc" for w in W_VALUES)
         + " |", "|---|---|" + "---|" * len(W_VALUES)]
  for name, rs in rows.items():
    by_w = {r["w"]: r for r in rs}
    settings = json.loads(rs[0]["sampler_settings"])
    cells = [f"{by_w[w]['fd']:.2f} / {by_w[w]['is']:.3f} / {by_w[w]['class_accuracy']:.3f}"
             for w in W_VALUES]
    out.append(f"| {name} | {settings['network_evals']} / {settings['guided_evals']} | "
               + " | ".join(cells) + " |")
  out += ["", "## Commands", "", "```bash", *commands, "```", ""]
  with open(args.out, "w") as f:
    f.write("\n".join(out))
  print("\n".join(out))


if __name__ == "__main__":
  main()
