"""A digits-only sanity metric: class accuracy of samples judged by an RBF SVM on pixels.

The SVM (scikit-learn `SVC`, default RBF kernel) is fit on the 1,497 training digits and scores
99.0% on the 300 held-out test digits (`test_accuracy`). It is a quick check that guided samples show the requested
class; it is not an Inception score and says nothing about ImageNet-scale quality.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def _fit(data_dir: str):
  from sklearn.svm import SVC

  from cfg_jax import data
  import ml_collections
  cfg = ml_collections.ConfigDict({"name": "digits", "data_dir": data_dir})
  x, y = data.eval_arrays(cfg, split="train")
  return SVC().fit(x.reshape(len(x), -1), y)


def judge(data_dir: str = ""):
  """The fitted SVM for the digits dataset in `data_dir` ('' = default), cached per process."""
  return _fit(data_dir)


def class_accuracy(samples: np.ndarray, labels: np.ndarray, *, data_dir: str = "") -> float:
  """Fraction of samples ([N, 8, 8, 1] in [−1, 1]) the SVM assigns to their requested label."""
  pred = judge(data_dir).predict(np.asarray(samples, np.float32).reshape(len(samples), -1))
  return float(np.mean(pred == np.asarray(labels)))


def test_accuracy(data_dir: str = "") -> float:
  """The SVM's own accuracy on the real held-out test digits (the judge's ceiling)."""
  from cfg_jax import data
  import ml_collections
  cfg = ml_collections.ConfigDict({"name": "digits", "data_dir": data_dir})
  x, y = data.eval_arrays(cfg, split="test")
  return class_accuracy(x, y, data_dir=data_dir)
