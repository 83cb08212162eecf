"""The datasets cfg_jax knows: what each looks like after preprocessing and where it lives.

`data.name` picks one of `VALID_NAMES`; `dataset_spec` gives its `DatasetSpec` (image shape, classes,
splits) and `resolve_data_dir` its tfds data dir. This module imports no tfds (configs, models and
validation read it); `sources.py` opens the prepared data. The table is in docs/data.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

DEFAULT_TFDS_DATA_DIR = "~/tensorflow_datasets"
DEFAULT_EMBEDDED_DATA_DIR = "~/.cache/cfg_jax/tensorflow_datasets"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset looks like after preprocessing.

  Attributes:
    name: TFDS dataset name (with config), e.g. ``'imagenet_resized/64x64'``.
    image_shape: (H, W, C) of the preprocessed images.
    num_classes: number of labels; labels are in ``[0, num_classes)``.
    train_split: TFDS split used for training.
    eval_split: TFDS split used for evaluation / reference statistics.
    config_name: the ``data.name`` value this spec was made from.
    crop_size: if set, images are resized (shorter side -> crop_size,
      antialiased bicubic) and centre-cropped to crop_size x crop_size.
    flip_invariant: whether horizontal flips are a valid augmentation.
    embedded: for the embedded datasets, the module (``cfg_jax.data.digits``, ...)
      whose ``ensure(data_dir)`` builds them offline into the data dir on first use.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  train_split: str
  eval_split: str
  config_name: str = ""
  crop_size: int | None = None
  flip_invariant: bool = True
  embedded: str | None = None


_SPECS: dict[str, DatasetSpec] = {
  "digits": DatasetSpec(
    name="cfg_digits",
    image_shape=(8, 8, 1),
    num_classes=10,
    train_split="train",
    eval_split="test",
    config_name="digits",
    flip_invariant=False,
    embedded="cfg_jax.data.digits",
  ),
  "mnist": DatasetSpec(
    name="cfg_mnist",
    image_shape=(28, 28, 1),
    num_classes=10,
    train_split="train",
    eval_split="test",
    config_name="mnist",
    flip_invariant=False,
    embedded="cfg_jax.data.mnist",
  ),
  "cifar10": DatasetSpec(
    name="cifar10",
    image_shape=(32, 32, 3),
    num_classes=10,
    train_split="train",
    eval_split="test",
    config_name="cifar10",
  ),
  "imagenet64": DatasetSpec(
    name="imagenet_resized/64x64",
    image_shape=(64, 64, 3),
    num_classes=1000,
    train_split="train",
    eval_split="validation",
    config_name="imagenet64",
  ),
  "imagenet128": DatasetSpec(
    name="imagenet2012",
    image_shape=(128, 128, 3),
    num_classes=1000,
    train_split="train",
    eval_split="validation",
    config_name="imagenet128",
    crop_size=128,
  ),
}
VALID_NAMES = tuple(_SPECS)


def dataset_spec(data_config: Any) -> DatasetSpec:
  """Returns the :class:`DatasetSpec` for ``data_config.name``."""
  name = data_config.name
  if name not in _SPECS:
    raise ValueError(
      f"Unknown dataset data.name={name!r}; valid names are: {', '.join(VALID_NAMES)}."
    )
  return _SPECS[name]


def resolve_data_dir(data_config: Any) -> str:
  """Absolute TFDS data dir for `data_config`.

  ``data.data_dir`` if set; otherwise ``~/.cache/cfg_jax/tensorflow_datasets``
  for the embedded datasets (digits, mnist) and ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` for the rest.
  Remote paths (``gs://...``, anything with ``://``) are returned unchanged.
  """
  data_dir = getattr(data_config, "data_dir", "") or ""
  if not data_dir:
    if dataset_spec(data_config).embedded is not None:
      data_dir = DEFAULT_EMBEDDED_DATA_DIR
    else:
      data_dir = os.environ.get("TFDS_DATA_DIR") or DEFAULT_TFDS_DATA_DIR
  data_dir = os.fspath(data_dir)
  if "://" in data_dir:
    return data_dir.rstrip("/")
  return os.path.abspath(os.path.expanduser(data_dir))


def image_shape(config: Any) -> tuple[int, int, int]:
  """(H, W, C) of the images of config.data's dataset."""
  return tuple(dataset_spec(config.data).image_shape)
