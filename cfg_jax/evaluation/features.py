"""The feature networks of evaluation and the metrics on their features.

On the embedded digits and MNIST the features come from the dataset's own small classifier
(`digits_classifier`: FD, a score and the class accuracy); everywhere the FID Inception-v3 is
used when its weights are available (`inception`). Reference features of a split are computed once
per network, weights and preprocessing and cached in the workdir. docs/evaluation.md has the
protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from cfg_jax import fileio, images, memory
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import pipeline
from cfg_jax.evaluation import digits_classifier, inception, metrics


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """Maps images [N,H,W,C] in [−1, 1] to (features [N,D], logits [N,K] or None)."""

  name: str  # 'digits_classifier_v<VERSION>' or 'inception'
  apply: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # None: no classifier
  logits_are_dataset_classes: bool  # True: argmax(logits) is a dataset label (class accuracy)
  key: str = ""  # what the features depend on beyond the name (weights digest, preprocessing)

  @property
  def cache_name(self) -> str:
    return f"{self.name}-{self.key}" if self.key else self.name


def params_digest(params: Any) -> str:
  """sha256 (hex) of a params tree: its flat names, dtypes, shapes and bytes, in name order."""
  digest = hashlib.sha256()
  for name, value in sorted(traverse_util.flatten_dict(params, sep="/").items()):
    array = np.ascontiguousarray(np.asarray(value))
    digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _batched(fn, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
  feats, logits = [], []
  for i in range(0, len(x), batch_size):
    f, l = fn(x[i : i + batch_size])
    feats.append(np.asarray(f, np.float32))
    if l is not None:
      logits.append(np.asarray(l, np.float32))
  return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def inception_outputs(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """(pool features, logits or None) of a batch: the feature step of evaluation."""
  out = inception.features(params, x)
  return out["pool"], out.get("logits")


AUTO_FEATURE_BATCH = {"cpu": 50}  # evaluation.feature_batch_size = 0 on this backend
AUTO_FEATURE_BATCH_ACCELERATOR = 500


def feature_batch_size(config: ml_collections.ConfigDict, backend: str | None = None) -> int:
  """Images per feature-network call: evaluation.feature_batch_size, or (0) the auto size of
  `backend` (default: this run's; 50 on CPU, where Inception needs ~33 MiB per image; 500 on
  GPU / TPU)."""
  bs = int(config.evaluation.feature_batch_size)
  if bs > 0:
    return bs
  backend = backend or jax.default_backend()
  return AUTO_FEATURE_BATCH.get(backend, AUTO_FEATURE_BATCH_ACCELERATOR)


def inception_net(config: ml_collections.ConfigDict, mesh=None) -> FeatureNet | None:
  """The FID Inception-v3 with the weights `evaluation.inception_weights` resolves to
  (`inception.resolve_weights_path`), or None when it resolves to none.

  Each batch is split over the `data` axis of `mesh` (default: all devices).
  """
  path = inception.resolve_weights_path(config.evaluation.inception_weights)
  if path is None:
    return None
  bs = feature_batch_size(config)
  memory.check_fits(
    memory.inception_bytes(bs),
    what=f"the Inception feature step at batch {bs}",
    field="evaluation.feature_batch_size",
    per_unit=memory.INCEPTION_BYTES_PER_IMAGE,
    current=bs,
  )
  params = inception.load_params(path)  # clear error if missing or wrong
  key = f"{params_digest(params)[:16]}-tf{inception.INPUT_SIZE}"  # weights, preprocessing
  apply = sharding_lib.sharded_batch_fn(inception_outputs, params, mesh or sharding_lib.make_mesh())
  return FeatureNet("inception", lambda x: _batched(apply, x, bs), False, key)


def feature_net(config: ml_collections.ConfigDict, mesh=None) -> FeatureNet:
  """The feature network of `config`'s dataset; raises a clear error if its weights are missing.

  Inception runs with each batch split over the `data` axis of `mesh` (default: all devices).
  """
  bs = config.evaluation.batch_size  # the digits classifier is small
  if config.data.name in digits_classifier.RECIPES:
    clf = digits_classifier.load_or_train(config.data)

    def apply_clf(b):
      out = clf.outputs(b)
      return out["features"], out["logits"]

    return FeatureNet(
      digits_classifier.feature_net_name(config.data),
      lambda x: _batched(apply_clf, x, bs),
      True,
      params_digest(clf.params)[:16],
    )
  net = inception_net(config, mesh)
  if net is None:
    path = config.evaluation.inception_weights
    if path == "none":
      raise inception.InceptionWeightsError(
        f"evaluation.inception_weights='none', but dataset {config.data.name!r} is evaluated "
        "with Inception only; give the weights' .npz or '' (the default location)."
      )
    inception.load_params(inception.default_weights_path())  # raises: says how to make them
  return net


def quantize(x: np.ndarray) -> np.ndarray:
  """Rounds samples to uint8 and back to [−1, 1], as images are stored and as evaluators see them."""
  return images.to_uint8(x).astype(np.float32) / 127.5 - 1.0


def reference_features(
  config: ml_collections.ConfigDict, net: FeatureNet, workdir: str
) -> dict[str, np.ndarray]:
  """Features of the reference split, cached in `<workdir>/eval/` (computed once per network,
  weights and preprocessing: the file is named by `net.cache_name`)."""
  ev = config.evaluation
  n = ev.reference_num_examples
  name = f"reference_{net.cache_name}_{config.data.name}_{ev.reference_split}_{n}.npz"
  path = os.path.join(workdir, "eval", name)
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  x, labels = pipeline.eval_arrays(
    config.data, split=ev.reference_split, max_examples=None if n <= 0 else n
  )
  feats, logits = net.apply(x)
  mu, sigma = metrics.feature_statistics(feats)
  ref = {"features": feats, "labels": labels, "mu": mu, "sigma": sigma}
  if logits is not None:
    ref["logits"] = logits
  if jax.process_index() == 0:
    fileio.write_atomic(path, lambda f: np.savez(f, **ref))
  return ref


def distribution_metrics(
  feats: np.ndarray, ref: dict[str, np.ndarray], *, pr_k: int = 3
) -> tuple[float, float, float]:
  """(Fréchet distance, precision, recall) of sample features against the reference."""
  mu, sigma = metrics.feature_statistics(feats)
  precision, recall = metrics.precision_recall(ref["features"], feats, k=pr_k)
  return metrics.frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), precision, recall


def sample_metrics(
  feats: np.ndarray,
  logits: np.ndarray | None,
  labels: np.ndarray,
  net: FeatureNet,
  ref: dict[str, np.ndarray],
  *,
  pr_k: int = 3,
) -> dict[str, float]:
  """FD / IS / precision / recall of sample features and logits from `net` (and class accuracy
  where the logits are dataset classes); IS and class accuracy are NaN without a classifier."""
  fd, precision, recall = distribution_metrics(feats, ref, pr_k=pr_k)
  nan = float("nan")
  is_mean, is_std = (
    (nan, nan)
    if logits is None
    else metrics.inception_score(logits, num_splits=min(10, len(feats)))
  )
  out = {"fd": fd, "is": is_mean, "is_std": is_std, "precision": precision, "recall": recall}
  out["class_accuracy"] = (
    float(np.mean(np.argmax(logits, -1) == labels))
    if net.logits_are_dataset_classes and logits is not None
    else nan
  )
  return out
