"""benchmarks/fid_vs_w.py's analysis: paired bootstrap verdicts and the report, on known data."""

import os

import numpy as np
import pytest

from benchmarks import fid_vs_w
from cfg_jax.evaluation import metrics, results


def _rows_and_boot(shifts):
  """Sample sets whose mean is shifted from the reference by `shifts[w]` (known FD ≈ shift²·d)."""
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(2000, 8))
  mu, sigma = metrics.feature_statistics(ref)
  base = rng.normal(size=(400, 8))
  feats = {w: base + s for w, s in shifts.items()}  # paired: same rows, shifted
  rows = [
    {
      "step": 1,
      "w": w,
      "num_samples": 400,
      "fid_precision": 0.5,
      "fid_recall": 0.5,
      "is": 9.0,
      "class_accuracy": 0.9,
      "seconds": 1.0,
      "fid": metrics.frechet_distance(*metrics.feature_statistics(f), mu, sigma),
      "fd": metrics.frechet_distance(*metrics.feature_statistics(f), mu, sigma),
    }
    for w, f in feats.items()
  ]
  b = metrics.bootstrap_frechet_distances(feats, mu, sigma, num_rounds=100)
  return rows, {"fid": b, "fd": b}


def test_minimum_beyond_noise_and_not():
  rows, boot = _rows_and_boot({0.0: 0.3, 0.3: 0.0, 1.0: 0.5})  # best at w = 0.3, far from noise
  cells = fid_vs_w.summarize(rows, boot)
  v = fid_vs_w.verdict(cells)
  assert v["best_w"] == 0.3 and v["p_better"] == 1.0 and v["minimum_at_w_gt_0_beyond_noise"]
  assert v["delta"] < 0 and abs(v["delta"] + 8 * 0.3**2) < 0.1  # FD gap = d·(0.3² − 0²)
  rows, boot = _rows_and_boot({0.0: 0.0, 0.3: 0.1, 1.0: 0.5})  # best at w = 0
  v = fid_vs_w.verdict(fid_vs_w.summarize(rows, boot), "fd_")
  assert v["best_w"] == 0.0 and not v["minimum_at_w_gt_0_beyond_noise"]


def test_report_renders_every_cell():
  rows, boot = _rows_and_boot({0.0: 0.3, 0.3: 0.0})
  cells = fid_vs_w.summarize(rows, boot)
  sweep = {
    "dataset": "digits",
    "p_uncond": 0.1,
    "step": 1,
    "fraction": "all",
    "num_steps": 8,
    "cells": cells,
    "verdict": fid_vs_w.verdict(cells),
    "verdict_fd": fid_vs_w.verdict(cells, "fd_"),
  }
  md = fid_vs_w.markdown(
    {
      "argv": "--quick",
      "machine": "m",
      "minutes": 1.0,
      "num_samples": 400,
      "rounds": 100,
      "sweeps": [sweep],
      "train_seconds": {},
      "commands": [],
    }
  )
  assert "| digits | 0.1 | 1 | 400 | Inception FID | 0.3 |" in md and "| 0.3 | " in md
  assert "| 1.8 |" in md and "| 3.03 |" in md  # the paper's ImageNet 64 FID beside w = 0, 0.3


class _RecordingEvaluator:
  """Stands in for evaluate.Evaluator: records which w each sweep ran and writes their rows and
  feature files as the real one does."""

  def __init__(self, config, workdir):
    self.config, self.workdir, self.calls = config, workdir, []

  def settings_key(self, t):
    return f"settings of T={t}"

  def same_features(self, row):
    return True

  def evaluate_step(self, step):
    c = self.config
    t, n = c.sampling.num_steps, c.evaluation.num_samples
    self.calls.append(tuple(c.evaluation.w_values))
    rows = [
      {
        "step": step,
        "guidance": "cfg",
        "w": float(w),
        "num_samples": n,
        "fid": 10.0 + w,
        "sampler_settings": self.settings_key(t),
      }
      for w in c.evaluation.w_values
    ]
    for w in c.evaluation.w_values:
      path = fid_vs_w.feature_file(self.workdir, step, t, w, n)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(path, features=np.zeros(1))
    results.append_results(self.workdir, rows)
    return rows


def test_evaluate_cells_runs_only_the_missing_w(tmp_path):
  args = fid_vs_w.argparse.Namespace(
    num_samples=20,
    reference_examples=-1,
    eval_batch=10,
    inception_weights="",
    quick=False,
    train_steps="",
  )
  ev = _RecordingEvaluator(fid_vs_w.load_config("digits", 0.1, args), str(tmp_path))
  first = fid_vs_w.evaluate_cells(ev, str(tmp_path), 7, (0.0, 0.5))
  both = fid_vs_w.evaluate_cells(ev, str(tmp_path), 7, (0.0, 0.3, 0.5, 1.0))
  again = fid_vs_w.evaluate_cells(ev, str(tmp_path), 7, (0.0, 1.0))
  assert ev.calls == [(0.0, 0.5), (0.3, 1.0)]  # the third call finds every row
  assert [r["w"] for r in first] == [0.0, 0.5]
  assert [r["fid"] for r in both] == [10.0, 10.3, 10.5, 11.0]
  assert [r["w"] for r in again] == [0.0, 1.0]


def test_train_steps_extend_a_dataset_s_run():
  args = fid_vs_w.argparse.Namespace(
    num_samples=20,
    reference_examples=-1,
    eval_batch=10,
    inception_weights="",
    quick=False,
    train_steps="mnist:4800",
  )
  mnist, digits = (
    fid_vs_w.load_config("mnist", 0.1, args),
    fid_vs_w.load_config("digits", 0.1, args),
  )
  assert (mnist.training.num_train_steps, mnist.training.checkpoint_every_steps) == (4800, 1200)
  assert digits.training.num_train_steps == 1500  # the config's own


@pytest.mark.slow
def test_a_grown_cell_equals_the_cell_drawn_at_once(trained_copy, tmp_path):
  """Growing a 10-sample cell to 30 draws only samples 10..29, and gives the metrics of drawing
  all 30 at once (the same noise and labels per sample index)."""
  import shutil

  from cfg_jax import validation
  from cfg_jax.jobs import evaluate as evaluate_job

  fresh = str(tmp_path / "fresh")
  shutil.copytree(trained_copy, fresh)
  args = fid_vs_w.argparse.Namespace(
    num_samples=10,
    reference_examples=100,
    eval_batch=10,
    inception_weights="none",
    quick=False,
    train_steps="",
  )
  config = fid_vs_w.load_config("digits", 0.1, args)
  config.sampling.num_steps = 4
  validation.validate(config, workdir=trained_copy)
  ev = evaluate_job.Evaluator(config, trained_copy)
  small = fid_vs_w.evaluate_cells(ev, trained_copy, 4, (0.0, 1.0))
  config.evaluation.num_samples = 30
  grown = fid_vs_w.evaluate_cells(ev, trained_copy, 4, (0.0, 1.0))
  assert [r["num_samples"] for r in small] == [10, 10]
  assert [(r["num_samples"], r["grown_from"]) for r in grown] == [(30, 10), (30, 10)]
  at_once = fid_vs_w.evaluate_cells(evaluate_job.Evaluator(config, fresh), fresh, 4, (0.0, 1.0))
  for a, b in zip(grown, at_once):
    for k in ("fd", "is", "precision", "recall", "class_accuracy"):
      assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (k, a[k], b[k])
