"""Building the embedded (offline) TFDS datasets into a data dir, once, under a file lock."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import tensorflow_datasets as tfds

from cfg_jax import fileio


def to_pil(image: np.ndarray, shape: tuple[int, int, int]):
  """uint8 [H,W,1] -> PIL 'L' image (tfds encodes PIL with PIL itself, avoiding a TF graph)."""
  from PIL import Image as PILImage  # Local: only needed while building.

  if image.shape != shape or image.dtype != np.uint8:
    raise ValueError(f"Bad image {image.shape} {image.dtype}, expected uint8 {shape}.")
  return PILImage.fromarray(image[:, :, 0], mode="L")


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
  lock = (contextlib.nullcontext() if remote
          else fileio.file_lock(os.path.join(data_dir, f".{builder.name}.lock")))
  with lock:
    builder = builder_cls(data_dir=data_dir)  # Re-read: another process may have built it.
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(
              # No download happens; keep tfds from computing anything slow.
              compute_stats=tfds.download.ComputeStatsMode.SKIP),
      )
      builder = builder_cls(data_dir=data_dir)
  return builder
