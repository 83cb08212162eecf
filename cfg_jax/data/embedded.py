"""Building the embedded (offline) TFDS datasets into a data dir, once, under a file lock."""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cfg_jax import fileio


def to_pil(image: np.ndarray, shape: tuple[int, int, int]):
  """uint8 [H,W,1] -> PIL 'L' image (tfds encodes PIL with PIL itself, avoiding a TF graph)."""
  from PIL import Image as PILImage  # Local: only needed while building.

  if image.shape != shape or image.dtype != np.uint8:
    raise ValueError(f"Bad image {image.shape} {image.dtype}, expected uint8 {shape}.")
  return PILImage.fromarray(image[:, :, 0], mode="L")


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A 10-class grayscale dataset whose data ships with an installed Python package.

  A subclass sets `IMAGE_SHAPE` and `VERSION`, implements `_info` (through `dataset_info`),
  `_arrays()` → (uint8 images [N, H, W, 1], labels [N]) and `_split_indices(labels)` → {split:
  sorted indices}; every example is keyed by its index in those arrays.
  """

  IMAGE_SHAPE: tuple[int, int, int]
  NUM_CLASSES = 10

  @abc.abstractmethod
  def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 1], int labels [N]) of the whole dataset."""

  @abc.abstractmethod
  def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{split name: the sorted indices of its examples}."""

  def dataset_info(
    self, *, description: str, homepage: str, citation: str
  ) -> tfds.core.DatasetInfo:
    """The `DatasetInfo` of `_info`: uint8 images, labels '0'..'9', stored in key order."""
    return tfds.core.DatasetInfo(
      builder=self,
      description=description,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=self.IMAGE_SHAPE, dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=[str(i) for i in range(self.NUM_CLASSES)]),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,  # records stay in key (= array index) order
      homepage=homepage,
      citation=citation,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Unused: the data ships with an installed package.
    images, labels = self._arrays()
    return {
      split: self._generate_examples(images, labels, indices)
      for split, indices in self._split_indices(labels).items()
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, object]]]:
    for i in indices:
      yield int(i), {"image": to_pil(images[i], self.IMAGE_SHAPE), "label": int(labels[i])}


def ensure_built(builder_cls, data_dir: str | os.PathLike[str]):
  """Returns `builder_cls(data_dir=...)`, building it (array_record) into `data_dir` if needed.

  When the dataset is already prepared this only reads ``dataset_info.json``. Concurrent callers
  on one machine are serialised with a file lock (local data dirs only).
  """
  data_dir = os.fspath(data_dir)
  remote = "://" in data_dir  # e.g. gs://: no local lock possible.
  if not remote:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  builder = builder_cls(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  lock = (
    contextlib.nullcontext()
    if remote
    else fileio.file_lock(os.path.join(data_dir, f".{builder.name}.lock"))
  )
  with lock:
    builder = builder_cls(data_dir=data_dir)  # Re-read: another process may have built it.
    if not builder.is_prepared():
      builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
          # No download happens; keep tfds from computing anything slow.
          compute_stats=tfds.download.ComputeStatsMode.SKIP
        ),
      )
      builder = builder_cls(data_dir=data_dir)
  return builder
