"""Digits-classifier metrics network: accuracy, determinism, disk cache, outputs."""

import json
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from cfg_jax import fileio
from cfg_jax.data import pipeline
from cfg_jax.evaluation import digits_classifier as dc


def _cfg(data_dir):
  return ml_collections.ConfigDict({"name": "digits", "data_dir": str(data_dir)})


def _assert_params_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _no_training(*args, **kwargs):
  raise AssertionError("train_digits_net was called although a valid cache exists")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data dir with the digits dataset and a trained, cached classifier."""
  path = tmp_path_factory.mktemp("digits_classifier")
  dc.clear_memory_cache()
  dc.load_or_train(_cfg(path))
  return path


@pytest.fixture(scope="module")
def classifier(data_dir):
  return dc.load_or_train(_cfg(data_dir))


@pytest.fixture(scope="module")
def splits(data_dir):
  cfg = _cfg(data_dir)
  return {s: pipeline.eval_arrays(cfg, split=s) for s in ("train", "test")}


def _copy_data_dir(src, tmp_path):
  """A private copy of the data dir (dataset + cache) that a test may damage."""
  dst = tmp_path / "data"
  shutil.copytree(src, dst)
  dc.clear_memory_cache()
  return dst


def test_accuracy(classifier, splits):
  x_test, y_test = splits["test"]
  x_train, y_train = splits["train"]
  test_acc = classifier.accuracy(x_test, y_test)
  assert len(x_test) == 300
  assert test_acc >= 0.97
  assert classifier.accuracy(x_train, y_train) >= test_acc - 0.02
  assert classifier.test_accuracy == test_acc


def test_training_is_deterministic(classifier, splits):
  params = dc.train_digits_net(*splits["train"])  # Default recipe, as load_or_train uses.
  _assert_params_equal(params, classifier.params)


def test_cache_layout_and_reload(data_dir, classifier, splits, monkeypatch):
  directory = dc.cache_dir(_cfg(data_dir))
  assert directory == os.path.join(str(data_dir), "cfg_digits_classifier", dc.VERSION)
  with open(os.path.join(directory, "info.json")) as f:
    info = json.load(f)
  assert info["test_accuracy"] == classifier.test_accuracy
  assert info["sha256"] == fileio.sha256_file(os.path.join(directory, "params.npz"))
  assert dc.load_or_train(_cfg(data_dir)) is classifier  # In-process cache.

  dc.clear_memory_cache()
  monkeypatch.setattr(dc, "train_digits_net", _no_training)
  reloaded = dc.load_or_train(_cfg(data_dir))
  assert reloaded is not classifier
  _assert_params_equal(reloaded.params, classifier.params)
  x_test = splits["test"][0]
  np.testing.assert_array_equal(reloaded.predict(x_test), classifier.predict(x_test))
  np.testing.assert_array_equal(reloaded.logits(x_test), classifier.logits(x_test))


def test_corrupt_params_retrain(data_dir, classifier, tmp_path, monkeypatch, caplog):
  path = _copy_data_dir(data_dir, tmp_path)
  params_file = os.path.join(dc.cache_dir(_cfg(path)), "params.npz")
  with open(params_file, "r+b") as f:
    f.seek(os.path.getsize(params_file) // 2)
    f.write(b"\x00\x01\x02\x03")
  calls = []
  real_train = dc.train_digits_net
  monkeypatch.setattr(
    dc, "train_digits_net", lambda *a, **k: calls.append(1) or real_train(*a, **k)
  )
  with caplog.at_level(logging.WARNING):
    retrained = dc.load_or_train(_cfg(path))
  assert calls == [1]
  assert any("retraining" in r.getMessage() for r in caplog.records)
  _assert_params_equal(retrained.params, classifier.params)
  dc.clear_memory_cache()  # The rewritten cache is valid again.
  monkeypatch.setattr(dc, "train_digits_net", _no_training)
  _assert_params_equal(dc.load_or_train(_cfg(path)).params, classifier.params)


@pytest.mark.parametrize("damage", ["truncated_npz", "bad_json", "wrong_shapes", "no_info"])
def test_unusable_cache_is_rejected(damage, data_dir, classifier, tmp_path, monkeypatch):
  """Cheap variants: training is replaced by returning the known-good params."""
  path = _copy_data_dir(data_dir, tmp_path)
  directory = dc.cache_dir(_cfg(path))
  params_file = os.path.join(directory, "params.npz")
  info_file = os.path.join(directory, "info.json")
  if damage == "truncated_npz":
    with open(params_file, "r+b") as f:
      f.truncate(100)
  elif damage == "bad_json":
    with open(info_file, "w") as f:
      f.write("{not json")
  elif damage == "wrong_shapes":  # A valid npz whose sha256 matches, but not DigitsNet params.
    np.savez(params_file, **{"Dense_0/kernel": np.zeros((3, 3), np.float32)})
    with open(info_file) as f:
      info = json.load(f)
    info["sha256"] = fileio.sha256_file(params_file)
    with open(info_file, "w") as f:
      json.dump(info, f)
  else:
    os.remove(info_file)
  calls = []
  monkeypatch.setattr(dc, "train_digits_net", lambda *a, **k: calls.append(1) or classifier.params)
  _assert_params_equal(dc.load_or_train(_cfg(path)).params, classifier.params)
  assert calls == [1]


def test_output_shapes_and_batching(classifier, splits):
  x_test = splits["test"][0]
  out = classifier.outputs(x_test)
  assert out["features"].shape == (300, dc.FEATURE_DIM)
  assert out["logits"].shape == (300, 10)
  assert out["features"].dtype == np.float32 and np.all(np.isfinite(out["features"]))
  np.testing.assert_array_equal(classifier.features(x_test), out["features"])
  small = dc.DigitsClassifier(classifier.params, batch_size=64)  # 5 chunks, last one padded.
  np.testing.assert_allclose(small.logits(x_test), out["logits"], rtol=1e-5, atol=1e-5)
  assert classifier.features(x_test[:0]).shape == (0, dc.FEATURE_DIM)
  with pytest.raises(ValueError):
    classifier.features(x_test[:, :, :, 0])


def test_noise_is_less_confident_than_digits(classifier, splits):
  def mean_max_softmax(x):
    logits = classifier.logits(x).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return float(np.mean(p.max(axis=1) / p.sum(axis=1)))

  noise = np.random.RandomState(0).uniform(-1, 1, (1000, 8, 8, 1)).astype(np.float32)
  real, fake = mean_max_softmax(splits["test"][0]), mean_max_softmax(noise)
  assert real > 0.95
  assert fake < real - 0.2


def test_rejects_other_datasets():
  with pytest.raises(ValueError):
    dc.load_or_train(ml_collections.ConfigDict({"name": "cifar10", "data_dir": "/nonexistent"}))
