"""`cfg_digits`: the UCI handwritten digits as a real (offline) TFDS dataset.

scikit-learn's 1,797 labelled 8x8 digits (pixels 0..16 rescaled to 0..255, 10 classes), split by a
fixed `RandomState(0)` permutation into `test` (the first `NUM_TEST`) and `train`, built without
any download by `ensure_digits` as `array_record`. The encoding and split rules are in docs/data.md.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cfg_jax.data import embedded

__all__ = [
  "CfgDigits",
  "DIGITS_NAME",
  "NUM_TEST",
  "SPLIT_SEED",
  "digits_split_indices",
  "digits_uint8",
  "ensure_digits",
]

DIGITS_NAME = "cfg_digits"
NUM_EXAMPLES = 1797
NUM_TEST = 300
SPLIT_SEED = 0
IMAGE_SHAPE = (8, 8, 1)


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """Returns all 1,797 digits as (uint8 [N,8,8,1] in 0..255, int64 [N]).

  Pixel values v in 0..16 map to round(v * 255 / 16), computed in integer
  arithmetic (floor((v * 255 * 2 + 16) / 32)) so the result does not depend
  on float rounding.
  """
  from sklearn.datasets import load_digits  # Local: sklearn import is slowish.

  data = load_digits()
  raw = np.asarray(data.images)
  values = np.rint(raw).astype(np.int64)
  if not np.array_equal(values, raw) or values.min() < 0 or values.max() > 16:
    raise ValueError("load_digits() returned pixel values outside 0..16 ints.")
  scaled = (values * 255 * 2 + 16) // 32  # == round(v*255/16), halves up.
  images = scaled.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
  labels = np.asarray(data.target, dtype=np.int64)
  if images.shape[0] != NUM_EXAMPLES:
    raise ValueError(f"Expected {NUM_EXAMPLES} digits from scikit-learn, got {images.shape[0]}.")
  return images, labels


def digits_split_indices() -> dict[str, np.ndarray]:
  """Returns the fixed split: {'train': 1,497 indices, 'test': 300 indices}.

  Indices refer to the order of `sklearn.datasets.load_digits()`. Each array
  is sorted ascending, which is also the order of the records on disk.
  """
  perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_EXAMPLES)
  return {"test": np.sort(perm[:NUM_TEST]), "train": np.sort(perm[NUM_TEST:])}


class CfgDigits(embedded.EmbeddedBuilder):
  """UCI handwritten digits (8x8, from scikit-learn) with a fixed split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 1,497 train / 300 test (RandomState(0) split)."}
  IMAGE_SHAPE = IMAGE_SHAPE
  # tfds 4.9.10's `DatasetBuilder.code_path` evaluates
  # `importlib_resources.abc.Traversable`, but tfds only depends on the
  # `importlib_resources` backport for Python < 3.9, so for a builder outside
  # the tensorflow_datasets package it raises ModuleNotFoundError during
  # `download_and_prepare`. Setting the (plain) class attribute sidesteps it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info(
      description=(
        "UCI optical recognition of handwritten digits as shipped by "
        "scikit-learn (load_digits): 8x8 grayscale images, pixel values "
        "0..16 rescaled to 0..255 with round(v*255/16), 10 classes. "
        "Fixed split: np.random.RandomState(0).permutation(1797); first "
        "300 -> test, remaining 1,497 -> train (not stratified)."
      ),
      homepage=("https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"),
      citation=(
        "@misc{alpaydin1998digits, author={Alpaydin, E. and Kaynak, C.}, "
        "title={Optical Recognition of Handwritten Digits}, "
        "year={1998}, howpublished={UCI Machine Learning Repository}}"
      ),
    )

  def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
    return digits_uint8()

  def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    del labels  # the split does not depend on them
    return digits_split_indices()


def ensure_digits(data_dir: str | os.PathLike[str]) -> CfgDigits:
  """Returns the `cfg_digits` builder, building it (array_record) into `data_dir` if needed."""
  return embedded.ensure_built(CfgDigits, data_dir)


ensure = ensure_digits  # what data/specs.py's `embedded` entry calls
