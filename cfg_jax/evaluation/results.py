"""The results of `--mode=evaluate`: rows of `<workdir>/eval/results.jsonl` (and results.csv),
one per (step, T, guidance strength), and where each cell's sample features are saved.

A row names its guidance method (`guidance`) and the swept strength in the method's column (`w`,
or `scale` for classifier guidance); `sampler_settings` holds the full sampler and method
settings, so a sweep is done only for the same settings and sample count. The columns are in
docs/evaluation.md.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import jax

from cfg_jax import guidance

RESULT_FIELDS = tuple(
  "step guidance num_steps w scale num_samples sampler feature_net fd is is_std precision recall "
  "class_accuracy fid fid_precision fid_recall fid_net seconds sampler_settings".split()
)
SCALAR_FIELDS = tuple("fd is precision recall class_accuracy fid fid_precision fid_recall".split())
FID_FIELDS = ("fid", "fid_precision", "fid_recall")  # Inception FID and P/R; NaN without weights


def results_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "results.jsonl")


def strength_field(name: str) -> str:
  """The results column of the strength that guidance method `name` sweeps (`w`, or `scale` for
  the classifier scale s of classifier guidance)."""
  return guidance.get(name).strength_field


def guidance_strength(row: dict[str, Any]) -> float:
  """w or s of a results row, whichever its guidance sweeps."""
  return row[strength_field(row["guidance"])]


def load_results(workdir: str) -> list[dict[str, Any]]:
  path = results_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_results(workdir: str, rows: list[dict[str, Any]]) -> None:
  """Appends rows to results.jsonl and rewrites results.csv from all rows (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(results_path(workdir), "a") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  with open(os.path.join(workdir, "eval", "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
    w.writeheader()
    for r in load_results(workdir):
      w.writerow({k: r.get(k) for k in RESULT_FIELDS})


def features_path(
  workdir: str, *, step: int, num_steps: int, guidance: str, w: float, num_samples: int
) -> str:
  """Where `evaluation.save_features` puts the features of one (step, T, w) cell."""
  return os.path.join(
    workdir, "eval", "features", f"step{step}_T{num_steps}_{guidance}_w{w:g}_n{num_samples}.npz"
  )
