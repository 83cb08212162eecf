"""A sanity metric of the embedded digits datasets: class accuracy judged by an RBF SVM on pixels.

The SVM (scikit-learn `SVC`, default RBF kernel) is fit on the train split of `digits` (8×8
images) or `mnist` (28×28 images); `test_accuracy` gives its score on the test split (the README
has the figures). It is a quick check that guided samples show the requested
class; it is not an Inception score and says nothing about ImageNet-scale quality.
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from cfg_jax.data import pipeline

DATASETS = ("digits", "mnist")


@functools.lru_cache(maxsize=4)
def _fit(data_dir: str, name: str):
  from sklearn.svm import SVC

  cfg = ml_collections.ConfigDict({"name": name, "data_dir": data_dir})
  x, y = pipeline.eval_arrays(cfg, split="train")
  return SVC().fit(x.reshape(len(x), -1), y)


def judge(data_dir: str = "", name: str = "digits"):
  """The fitted SVM for dataset `name` in `data_dir` ('' = default), cached per process."""
  return _fit(data_dir, name)


def class_accuracy(
  samples: np.ndarray, labels: np.ndarray, *, data_dir: str = "", name: str = "digits"
) -> float:
  """Fraction of samples ([N, H, W, 1] in [−1, 1]) the SVM assigns to their requested label."""
  pred = judge(data_dir, name).predict(np.asarray(samples, np.float32).reshape(len(samples), -1))
  return float(np.mean(pred == np.asarray(labels)))


def test_accuracy(data_dir: str = "", name: str = "digits") -> float:
  """The SVM's own accuracy on the real held-out test split (the judge's ceiling)."""
  import ml_collections

  cfg = ml_collections.ConfigDict({"name": name, "data_dir": data_dir})
  x, y = pipeline.eval_arrays(cfg, split="test")
  return class_accuracy(x, y, data_dir=data_dir, name=name)
