"""benchmarks/autoguidance.py's plumbing: method keys, per-dataset configs, the paired check, the
bootstrap of both feature sets and the report, on known data."""

import argparse
import os
import types

import numpy as np
import pytest

from benchmarks import autoguidance as bench
from benchmarks import common
from cfg_jax.evaluation import metrics
from tests.helpers import REPO


def _args(**kw):
  base = dict(
    config=os.path.join(REPO, "configs", "mnist.py"),
    main="runs/mnist",
    main_step=1200,
    early_step=[300, 600],
    small_guide="runs/mnist_guide",
    small_config=os.path.join(REPO, "configs", "mnist_guide.py"),
    classifier="",
    methods="auto_early,auto_small",
    num_samples=30,
    reference_examples=1000,
    eval_batch=100,
    inception_weights="",
    seed=0,
    rounds=50,
    cfg_w=[0.0, 1.0],
    auto_w=[0.5],
    small_w=[1.0],
    scales=[1.0],
  )
  return argparse.Namespace(**{**base, **kw})


def test_methods_expand_to_one_sweep_per_early_guide():
  args = _args()
  assert bench.method_names(args) == ["cfg", "auto_early_300", "auto_early_600", "auto_small"]
  c = bench.method_config("auto_early_600", args)
  assert c.data.name == "mnist" and c.evaluation.guidance == "auto"
  assert c.autoguidance.workdir == "runs/mnist" and c.autoguidance.checkpoint_step == 600
  assert c.evaluation.reference_num_examples == 1000 and c.evaluation.inception_weights == ""
  c = bench.method_config("auto_small", args)
  assert c.autoguidance.config.endswith("mnist_guide.py") and c.evaluation.w_values == (1.0,)
  assert bench.method_config("auto_early_300", args).evaluation.w_values == (0.5,)


def _feats(shifts, rng, labels):
  base = rng.normal(size=(len(labels), 6))
  return {k: {"labels": labels, "features": base + s, "inception": base + 2 * s} for k, s in shifts}


@pytest.mark.slow  # imports cfg_jax.evaluate (most of the time when run alone)
def test_bootstrap_pairs_both_feature_sets_and_report_shows_fid():
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(2000, 6))
  mu, sigma = metrics.feature_statistics(ref)
  refd = {"mu": mu, "sigma": sigma}
  labels = np.arange(400) % 10
  keys = [(("cfg", 0.0), 0.3), (("cfg", 1.0), 0.5), (("auto_early_300", 0.5), 0.0)]
  feats = _feats(keys, rng, labels)
  common.check_paired(feats)
  ev = types.SimpleNamespace(ref=refd, fid_ref=refd)
  boot = common.paired_bootstrap(feats, ev, rounds=50, seed=0)
  assert set(boot) == {"fd", "fid"}
  d = boot["fid"][("auto_early_300", 0.5)] - boot["fid"][("cfg", 0.0)]
  assert np.all(d < 0) and abs(np.mean(d) + 6 * (0.6**2)) < 0.3  # FD gap = d·(shift²)
  results = {}
  for (name, v), f in feats.items():
    fd = metrics.frechet_distance(*metrics.feature_statistics(f["features"]), mu, sigma)
    fid = metrics.frechet_distance(*metrics.feature_statistics(f["inception"]), mu, sigma)
    row = dict(
      step=1200, guidance="cfg", w=v, fd=fd, fid=fid, precision=0.5, recall=0.5, seconds=1.0
    )
    row.update({"is": 9.0, "class_accuracy": 0.9})
    results.setdefault(name, {"rows": []})["rows"].append(row)
  for name in results:
    results[name]["boot"] = {
      m: {k[1]: b[k] for k in feats if k[0] == name} for m, b in boot.items()
    }
  args = _args(num_steps=32, p_uncond=0.1, argv="", reference_text="1000 train examples")
  text = bench.report(results, args, 1.0)
  assert "## Best FID per method" in text and "| FID | ΔFID vs w=0 |" in text
  best = [line for line in text.splitlines() if line.startswith("| autoguidance, guide = step 300")]
  assert len(best) == 1 and "| w = 0.5 |" in best[0] and "| 1.00 |" in best[0]  # P(<w0) = 1


def test_unpaired_cells_are_refused():
  rng = np.random.default_rng(0)
  feats = _feats([(("cfg", 0.0), 0.0)], rng, np.arange(20) % 10)
  feats.update(_feats([(("cfg", 1.0), 0.0)], rng, np.arange(20)[::-1] % 10))
  with pytest.raises(ValueError, match="paired"):
    common.check_paired(feats)
