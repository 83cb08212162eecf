"""Opening prepared tfds datasets: availability checks with the fix in the message, and random
access to decoded examples (in memory when small).

`check_available` fails fast (before any compilation, never downloading) when a dataset is not
prepared in `data.data_dir`; an embedded dataset (digits, mnist) is built offline on first use.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cfg_jax.data.specs import DatasetSpec, dataset_spec, resolve_data_dir
from cfg_jax.errors import UserError

IN_MEMORY_MAX_BYTES = 1 << 30
_READ_CHUNK = 1024  # Examples per data-source read when loading into memory.


class DatasetNotAvailableError(UserError, ValueError):
  """The dataset is not prepared in the data dir and cannot be fetched here."""


_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def _find_prepared_dir(data_dir: str, tfds_name: str) -> str | None:
  """Newest ``<data_dir>/<tfds_name>/<x.y.z>`` holding a dataset_info.json.

  Works for local and remote (``gs://``) data dirs (via ``etils.epath``).
  """
  base = epath.Path(data_dir).joinpath(*tfds_name.split("/"))
  if not base.is_dir():
    return None
  versions = []
  for entry in base.iterdir():
    m = _VERSION_RE.match(entry.name)
    if m and (entry / "dataset_info.json").exists():
      versions.append((tuple(int(g) for g in m.groups()), entry.name))
  if not versions:
    return None
  return os.fspath(base / max(versions)[1])


def _not_available_message(spec: DatasetSpec, data_dir: str) -> str:
  """Explains that `spec` is missing from `data_dir` and how to provide it."""
  return (
    f"Dataset {spec.name!r} (data.name={spec.config_name!r}) is not "
    f"prepared in data dir {data_dir!r} (looked for "
    f"{os.path.join(data_dir, spec.name)}/<version>/dataset_info.json), and "
    "this machine cannot download it. " + _how_to_provide(spec, data_dir)
  )


def _how_to_provide(spec: DatasetSpec, data_dir: str) -> str:
  if spec.name == "imagenet2012":
    return (
      "ImageNet (ILSVRC2012) needs a manual download: get "
      "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
      "https://image-net.org (registration required), place them in "
      f"{os.path.join(data_dir, 'downloads', 'manual')}/, then run "
      f"`tfds build imagenet2012 --data_dir={data_dir} "
      "--file_format=array_record` (array_record gives exact resume; "
      "tfrecord also works). Or set --config.data.data_dir to a directory "
      "where imagenet2012 is already prepared."
    )
  return (
    f"To provide it, run `tfds build {spec.name} --data_dir=DIR "
    "--file_format=array_record` on a machine with network access "
    "(array_record gives exact resume; the default tfrecord also works) "
    f"and copy the contents of DIR into {data_dir}, or set "
    "--config.data.data_dir=DIR to where the copy is."
  )


def _prepared_builder(spec: DatasetSpec, data_dir: str):
  """Returns a TFDS builder for the prepared dataset (an embedded one: builds it)."""
  if spec.embedded is not None:
    return importlib.import_module(spec.embedded).ensure(data_dir)
  prepared_dir = _find_prepared_dir(data_dir, spec.name)
  if prepared_dir is None:
    raise DatasetNotAvailableError(_not_available_message(spec, data_dir))
  # Reads the prepared dir's JSON metadata only: no dataset code, no network.
  return tfds.builder_from_directory(prepared_dir)


def check_available(data_config: Any) -> DatasetSpec:
  """Makes sure the dataset can be read; cheap, call it before compiling.

  An embedded dataset is built into the data dir if needed (offline, seconds). For the other
  datasets this only looks at files in the data dir and raises
  :class:`DatasetNotAvailableError` (a ValueError) naming the dataset, the
  data dir and how to provide it, if it is not prepared there or lacks the
  train/eval splits (and a ValueError if its image shape / class count do not
  match the spec). Never downloads.

  Returns:
    The dataset's :class:`DatasetSpec`.
  """
  return checked_builder(data_config)[0]


def checked_builder(data_config: Any):
  """(spec, builder) of an available dataset; see `check_available`."""
  spec = dataset_spec(data_config)
  data_dir = resolve_data_dir(data_config)
  builder = _prepared_builder(spec, data_dir)
  missing = [s for s in (spec.train_split, spec.eval_split) if s not in builder.info.splits]
  if missing:
    raise DatasetNotAvailableError(
      f"Dataset {spec.name!r} in {builder.data_dir!r} has no split(s) "
      f"{missing}; found {sorted(builder.info.splits)}. " + _how_to_provide(spec, data_dir)
    )
  _check_features(spec, builder)
  return spec, builder


def _check_features(spec: DatasetSpec, builder) -> None:
  """Raises ValueError if the prepared features cannot give `spec` batches."""
  features = builder.info.features
  where = f"Dataset prepared in {os.fspath(builder.data_dir)!r}"
  if "image" not in features or "label" not in features:
    raise ValueError(
      f"{where} has features {sorted(features)}; expected 'image' and "
      f"'label' for data.name={spec.config_name!r}."
    )
  shape = tuple(features["image"].shape)
  wanted = spec.image_shape if spec.crop_size is None else (None, None, spec.image_shape[-1])
  if len(shape) != 3 or any(w is not None and s != w for s, w in zip(shape, wanted)):
    raise ValueError(
      f"{where} has images of shape {shape}, but data.name="
      f"{spec.config_name!r} needs {spec.image_shape}"
      + ("" if spec.crop_size is None else " (after resize + crop)")
      + "."
    )
  num_classes = getattr(features["label"], "num_classes", None)
  if num_classes != spec.num_classes:
    raise ValueError(
      f"{where} has {num_classes} classes, but data.name="
      f"{spec.config_name!r} needs {spec.num_classes}."
    )


def _resize_center_crop_np(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side -> `size` (PIL bicubic, antialiased), centre crop; uint8."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top

  h, w, c = image.shape
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  pil = PILImage.fromarray(image[:, :, 0] if c == 1 else image)
  if (nh, nw) != (h, w):
    pil = pil.resize((nw, nh), resample=PILImage.BICUBIC)
  out = np.asarray(pil).reshape(nh, nw, c)
  top, left = (nh - size) // 2, (nw - size) // 2
  return out[top : top + size, left : left + size]


class SourceReader:
  """Random access to decoded uint8 examples of one split of a TFDS source."""

  def __init__(self, builder, split: str, spec: DatasetSpec):
    self._source = builder.as_data_source(split=split)
    self._spec = spec

  def __len__(self) -> int:
    return len(self._source)

  def _channels(self, image: np.ndarray) -> np.ndarray:
    """PIL may decode a stray grayscale JPEG as [H, W]: make it [H, W, C]."""
    if image.ndim == 2:
      image = image[:, :, None]
    channels = self._spec.image_shape[-1]
    if image.shape[-1] == 1 and channels != 1:
      image = np.repeat(image, channels, axis=-1)
    return image

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = self._source.__getitems__([int(i) for i in indices])
    images = [self._channels(np.asarray(ex["image"])) for ex in examples]
    if self._spec.crop_size is not None:
      images = [_resize_center_crop_np(im, self._spec.crop_size) for im in images]
    labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    if images:
      return np.stack(images), labels
    return np.zeros((0, *self._spec.image_shape), np.uint8), labels


class _InMemory:
  """A whole decoded split (uint8 images, int32 labels) held in memory."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


@functools.lru_cache(maxsize=4)
def _load_in_memory(prepared_dir: str, split: str, spec: DatasetSpec, count: int) -> _InMemory:
  """Decodes the first `count` examples of `split` once (cached, read-only)."""
  reader = SourceReader(tfds.builder_from_directory(prepared_dir), split, spec)
  images = np.empty((count, *spec.image_shape), np.uint8)
  labels = np.empty((count,), np.int32)
  for start in range(0, count, _READ_CHUNK):
    idx = np.arange(start, min(count, start + _READ_CHUNK))
    images[idx], labels[idx] = reader.get(idx)
  images.flags.writeable = False
  labels.flags.writeable = False
  return _InMemory(images, labels)


def is_random_access(builder) -> bool:
  formats = builder.info.available_file_formats()
  return tfds.core.FileFormat.ARRAY_RECORD in formats


def random_access_reader(builder, split: str, spec: DatasetSpec):
  """In-memory copy of the split if small enough, else a streaming reader."""
  count = builder.info.splits[split].num_examples
  if count * int(np.prod(spec.image_shape)) <= IN_MEMORY_MAX_BYTES:
    return _load_in_memory(os.fspath(builder.data_dir), split, spec, count)
  return SourceReader(builder, split, spec)
