"""The paper's experiments at small scale, on the embedded digits default, with the real CLI.

    python -m benchmarks.paper_small_scale [--out benchmarks/results/paper_small_scale.md]

Trains `configs/digits.py` three times (p_uncond = 0.1, 0.2, 0.5), evaluates each checkpoint with
`--mode=evaluate` over the paper's w grid and (for p_uncond = 0.1) over several T, and writes a
markdown report with the tables, the exact commands, and the paper's ImageNet numbers beside them.
Every number comes from `<workdir>/eval/results.jsonl` written by the evaluation job. About 30 min
on a 2-core CPU.
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

W_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)  # the paper's Table 1 grid
W_SHORT = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0)
T_GRID = (16, 64, 256)
W_FOR_T = (0.0, 0.3, 1.0, 3.0)
NUM_SAMPLES = 1000

# Paper, Table 1 (ImageNet 64x64, T = 256): FID / IS for p_uncond = 0.1 / 0.2 / 0.5.
PAPER_T1 = {
  0.0: ((1.8, 1.8, 2.21), (53.71, 52.9, 47.61)),
  0.1: ((1.55, 1.62, 1.91), (66.11, 64.58, 56.1)),
  0.2: ((2.04, 2.1, 2.08), (78.91, 76.99, 65.6)),
  0.3: ((3.03, 2.93, 2.65), (92.8, 88.64, 74.92)),
  0.4: ((4.3, 4.0, 3.44), (106.2, 101.11, 84.27)),
  0.5: ((5.74, 5.19, 4.34), (119.3, 112.15, 92.95)),
  1.0: ((12.6, 11.21, 9.13), (170.1, 158.29, 131.1)),
  2.0: ((21.03, 18.79, 16.16), (225.5, 212.98, 183)),
  3.0: ((24.83, 22.36, 19.75), (250.4, 237.65, 208.9)),
  4.0: ((26.22, 23.84, 21.48), (260.2, 248.97, 225.1)),
}
# Paper, Table 2 (ImageNet 128x128, p_uncond = 0.1): FID / IS for T = 128 / 256 / 1024.
PAPER_T2 = {
  0.0: ((8.11, 7.27, 7.22), (81.46, 82.45, 81.54)),
  0.3: ((3.04, 2.43, 2.43), (156.09, 158.47, 156)),
  1.0: ((7.88, 7.86, 7.8), (295.29, 297.98, 294.56)),
  3.0: ((19.77, 19.77, 19.56), (409.16, 407.44, 405.68)),
}


def run(cmd: list[str], log: list[str]) -> None:
  log.append(" ".join(shlex.quote(c) for c in ["python", *cmd[1:]]))  # as a user types it
  print("$", log[-1], flush=True)
  subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli(workdir: str, *args: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "cfg_jax.main",
    "--config=configs/digits.py",
    f"--workdir={workdir}",
    *args,
  ]


def tup(values) -> str:
  return "(" + ",".join(f"{v:g}" for v in values) + ",)"


def rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    return [json.loads(line) for line in f]


def pick(rs, **match):
  out = [r for r in rs if all(r.get(k) == v for k, v in match.items())]  # classifier rows: no w
  return out[-1] if out else None


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument(
    "--root",
    default=os.path.join("runs", "paper_small_scale"),
    help="work directories, relative to the repository root",
  )
  parser.add_argument(
    "--out", default=os.path.join(REPO, "benchmarks", "results", "paper_small_scale.md")
  )
  args = parser.parse_args()
  commands: list[str] = []
  start = time.time()
  workdirs = {}
  for p in (0.1, 0.2, 0.5):
    wd = os.path.join(args.root, f"p_uncond_{p:g}")
    workdirs[p] = wd
    run(cli(wd, f"--config.guidance.p_uncond={p}"), commands)
    w_values = W_GRID if p == 0.1 else W_SHORT
    run(
      cli(
        wd,
        "--mode=evaluate",
        f"--config.guidance.p_uncond={p}",
        f"--config.evaluation.num_samples={NUM_SAMPLES}",
        f"--config.evaluation.w_values={tup(w_values)}",
      ),
      commands,
    )
  run(
    cli(
      workdirs[0.1],
      "--mode=evaluate",
      f"--config.evaluation.num_samples={NUM_SAMPLES}",
      f"--config.evaluation.w_values={tup(W_FOR_T)}",
      f"--config.evaluation.num_steps_values={tup(T_GRID)}",
    ),
    commands,
  )
  minutes = (time.time() - start) / 60
  results = {p: rows(wd) for p, wd in workdirs.items()}

  def fmt(r, key, digits=2):
    return "—" if r is None else f"{r[key]:.{digits}f}"

  out = [
    "# The paper's experiments at small scale (embedded digits default)",
    "",
    f"Produced by `python -m benchmarks.paper_small_scale` in {minutes:.0f} min on "
    f"{platform.machine()} with {os.cpu_count()} CPU cores, JAX CPU. Each model: "
    "`configs/digits.py` (0.21M-parameter U-Net, 1,500 steps of batch 64, one seed). "
    f"Each cell: {NUM_SAMPLES} class-balanced samples, sample i with noise key i at every w. "
    "**FD, IS and accuracy are digits-classifier metrics** (features / softmax of a small CNN "
    "trained on the digits train split, 100% on the test split; reference: the 1,497 train "
    "digits), not Inception FID / IS: compare shapes of curves with the paper, not values. "
    "The classifier's IS is at most 10 (10 classes).",
    "",
    "## 1. Metrics vs w (T = 64, v = 0.3), for p_uncond = 0.1 / 0.2 / 0.5",
    "",
    "| w | FD ↓ (0.1 / 0.2 / 0.5) | IS ↑ (0.1 / 0.2 / 0.5) | class accuracy (0.1 / 0.2 / 0.5) "
    "| precision / recall (p_uncond 0.1) | paper ImageNet 64 FID (0.1 / 0.2 / 0.5) "
    "| paper IS (0.1 / 0.2 / 0.5) |",
    "|---|---|---|---|---|---|---|",
  ]
  for w in W_GRID:
    rs = [pick(results[p], w=w, num_steps=64) for p in (0.1, 0.2, 0.5)]
    r1 = rs[0]
    fid, isv = PAPER_T1[w]
    out.append(
      f"| {w:g} | {' / '.join(fmt(r, 'fd') for r in rs)} | {' / '.join(fmt(r, 'is', 3) for r in rs)}"
      f" | {' / '.join(fmt(r, 'class_accuracy', 3) for r in rs)} | "
      f"{fmt(r1, 'precision', 3)} / {fmt(r1, 'recall', 3)} | "
      f"{' / '.join(f'{v:g}' for v in fid)} | {' / '.join(f'{v:g}' for v in isv)} |"
    )
  out += [
    "",
    "## 2. Metrics vs T (p_uncond = 0.1, v = 0.3)",
    "",
    "| w | FD ↓ (T = " + " / ".join(map(str, T_GRID)) + ") | IS ↑ | class accuracy "
    "| paper ImageNet 128 FID (T = 128 / 256 / 1024) | paper IS |",
    "|---|---|---|---|---|---|",
  ]
  for w in W_FOR_T:
    rs = [pick(results[0.1], w=w, num_steps=t) for t in T_GRID]
    fid, isv = PAPER_T2[w]
    out.append(
      f"| {w:g} | {' / '.join(fmt(r, 'fd') for r in rs)} | "
      f"{' / '.join(fmt(r, 'is', 3) for r in rs)} | "
      f"{' / '.join(fmt(r, 'class_accuracy', 3) for r in rs)} | "
      f"{' / '.join(f'{v:g}' for v in fid)} | {' / '.join(f'{v:g}' for v in isv)} |"
    )
  out += ["", "## Commands", "", "```bash", *commands, "```", ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(out))
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump({str(p): r for p, r in results.items()}, f, indent=1)
  print("\n".join(out))


if __name__ == "__main__":
  main()
