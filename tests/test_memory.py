"""Every mode fits the machine it runs on: cheap checks come before reference statistics and
compiles, Inception runs at its own batch size (the same features whatever the batch), a step
that would not fit stops with the field to lower, and a sweep keeps every finished cell."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cfg_jax import memory, validation
from cfg_jax.evaluation import convert_inception, features, inception, results
from cfg_jax.jobs import evaluate as evaluate_job
from tests.helpers import REPO, cli_env, tiny_config
from tests.test_inception import fake_state_dict

GiB = 2**30


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory):
  """A valid Inception .npz (the real architecture, random weights), as `make fid-weights`
  writes it: the evaluation job loads it like the real one."""
  path = str(tmp_path_factory.mktemp("weights") / "inception_fid.npz")
  inception.save_params(convert_inception.convert_state_dict(fake_state_dict()), path)
  return path


def _cli(workdir, weights, *args):
  env = dict(cli_env(2), CFG_JAX_INCEPTION_WEIGHTS=weights)
  return subprocess.run(
    [sys.executable, "-m", "cfg_jax.main", "--config=configs/digits.py", f"--workdir={workdir}"]
    + list(args),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_evaluate_on_an_empty_workdir_stops_before_any_inception_work(fake_weights, tmp_path):
  start = time.time()
  proc = _cli(str(tmp_path), fake_weights, "--mode=evaluate")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "ERROR CheckpointError: no checkpoints in" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "eval")  # no reference statistics were computed
  assert time.time() - start < 120  # seconds, not the minutes of Inception on 1,497 images


def test_check_fits_names_the_field_and_the_largest_value_that_fits():
  # 4 GiB available, 90% usable: (0.9 * 4 GiB - fixed) / per image, rounded down (with the
  # figures of cfg_jax/memory.py: (3686.4 MiB - 555 MiB) / 33 MiB = 94.9 -> 94).
  need = memory.inception_bytes(500)
  fits = int((0.9 * 4 * GiB - memory.INCEPTION_FIXED_BYTES) // memory.INCEPTION_BYTES_PER_IMAGE)
  assert fits == 94
  with pytest.raises(memory.MemoryPlanError) as e:
    memory.check_fits(
      need,
      what="the Inception feature step at batch 500",
      field="evaluation.feature_batch_size",
      per_unit=memory.INCEPTION_BYTES_PER_IMAGE,
      current=500,
      available=4 * GiB,
      backend="cpu",
    )
  msg = str(e.value)
  assert f"--config.evaluation.feature_batch_size={fits}" in msg, msg
  assert f"needs about {need / GiB:.1f} GiB" in msg and "4.0 GiB available" in msg, msg
  memory.check_fits(  # `fits` fits, and accelerators are not judged by the CPU figures
    memory.inception_bytes(fits),
    what="",
    field="f",
    per_unit=1,
    current=1,
    available=4 * GiB,
    backend="cpu",
  )
  memory.check_fits(need, what="", field="f", per_unit=1, current=1, available=1, backend="tpu")


def test_the_predicted_inception_peak_is_the_measured_one():
  """cfg_jax/memory.py's figures against the fit of benchmarks/memory.py's probes (measured peak
  RSS of the feature step alone at batch 25 / 50 / 100), within 10% at each probed batch."""
  with open(os.path.join(REPO, "benchmarks", "results", "memory.json")) as f:
    cases = json.load(f)["cases"]
  probes = {c["batch"]: c["peak_rss_gib"] for c in cases if c["mode"] == "probe"}
  assert sorted(probes) == [25, 50, 100]
  for batch, gib in probes.items():
    assert memory.inception_bytes(batch) / GiB == pytest.approx(gib, rel=0.1), batch


def test_feature_batch_size_auto_and_validation():
  c = tiny_config()
  assert features.feature_batch_size(c) == 50  # the tests run on CPU
  c.evaluation.feature_batch_size = 7
  assert features.feature_batch_size(c) == 7
  c.evaluation.feature_batch_size = -1
  with pytest.raises(validation.ConfigError, match="evaluation.feature_batch_size"):
    validation.validate(c, num_devices=8)


@pytest.mark.slow  # two Inception compiles at 299x299
def test_inception_features_do_not_depend_on_the_feature_batch(fake_weights):
  c = tiny_config(**{"evaluation.inception_weights": fake_weights})
  x = np.asarray(jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1, maxval=1))
  out = {}
  for bs in (2, 6):
    c.evaluation.feature_batch_size = bs
    out[bs], _ = features.inception_net(c).apply(x)
  assert out[2].shape == (6, 2048)
  np.testing.assert_allclose(out[2], out[6], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_sweep_keeps_finished_cells_and_resumes_where_it_stopped(trained_copy, monkeypatch):
  c = tiny_config(
    **{
      "evaluation.w_values": (0.0, 1.0, 3.0),
      "evaluation.num_samples": 10,
      "evaluation.batch_size": 10,
      "evaluation.inception_weights": "none",
      "evaluation.reference_num_examples": 50,
    }
  )
  validation.validate(c, workdir=trained_copy)
  calls = []
  real = features.sample_metrics

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # stopped while the second cell runs
    return real(*args, **kwargs)

  monkeypatch.setattr(features, "sample_metrics", interrupted)
  with pytest.raises(KeyboardInterrupt):
    evaluate_job.Evaluator(c, trained_copy).evaluate_step(None)
  assert [r["w"] for r in results.load_results(trained_copy)] == [0.0]  # the first is on disk
  rows = evaluate_job.Evaluator(c, trained_copy).evaluate_step(None)
  assert len(calls) == 2 + 2  # the rerun sampled only the two cells that were missing
  assert [r["w"] for r in rows] == [0.0, 1.0, 3.0]
  assert [r["w"] for r in results.load_results(trained_copy)] == [0.0, 1.0, 3.0]


def test_a_cell_measured_without_inception_is_not_done_once_the_weights_are_there():
  """A sweep run before `make fid-weights` has rows without FID: with the weights installed the
  same sweep must compute them again (and cells of other Inception weights count neither)."""
  from cfg_jax import guidance
  from tests.helpers import load_config

  config = load_config("digits")
  config.evaluation.w_values = (0.0, 1.0)
  ev = object.__new__(evaluate_job.Evaluator)  # the bookkeeping alone: no networks
  ev.config, ev.workdir, ev.network_steps = config, "/nonexistent", {}
  ev.method = guidance.from_config(config, section="evaluation")
  ev.net, ev.fid_net = features.FeatureNet("digits_classifier_v1", None, True, "ab"), None
  t, n = config.sampling.num_steps, config.evaluation.num_samples
  rows = [
    {
      "step": 5,
      "guidance": "cfg",
      "w": w,
      "num_samples": n,
      "feature_net": "digits_classifier_v1",
      "fid_net": "",
      "sampler_settings": ev.settings_key(t),
    }
    for w in (0.0, 1.0)
  ]
  assert ev.sweep_done(5, rows) and all(ev.cell_done(r, 5, t) for r in rows)
  ev.fid_net = features.FeatureNet("inception", None, False, "0123-tf299")  # weights installed
  assert not ev.sweep_done(5, rows) and not any(ev.cell_done(r, 5, t) for r in rows)
  with_fid = [dict(r, fid_net="inception-0123-tf299") for r in rows]
  assert ev.sweep_done(5, with_fid) and all(ev.cell_done(r, 5, t) for r in with_fid)
  other_weights = [dict(r, fid_net="inception-4567-tf299") for r in rows]
  assert not ev.sweep_done(5, other_weights)
  assert not any(ev.cell_done(r, 5, t) for r in other_weights)
  ev.net = features.FeatureNet("digits_classifier_v2", None, True, "cd")  # a new classifier
  assert not ev.sweep_done(5, with_fid) and not any(ev.cell_done(r, 5, t) for r in with_fid)
