"""Input pipelines: dataset specs, availability checks, train/eval data.

`data.name` picks one of the datasets of `VALID_NAMES`; `check_available` fails fast (before any
compilation, never downloading) when it is not prepared in `data.data_dir`. Batches are
`{'image': float32 [B,H,W,C] in [-1, 1], 'label': int32 [B]}`. Datasets prepared as
`array_record` get an exactly resumable random-access pipeline (the batch at step s is a function
of (seed, s)); `tfrecord` ones get a seeded tf.data pipeline. The dataset table, the determinism
and resume rules of both paths and the ImageNet resizing are in docs/data.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

# Environment defaults for when TensorFlow gets imported (tf.data path only):
# quiet C++ INFO logs, and never pre-allocate GPU memory that JAX needs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from cfg_jax.data import digits as digits_lib  # pylint: disable=g-import-not-at-top
from cfg_jax.data import mnist as mnist_lib  # pylint: disable=g-import-not-at-top
from cfg_jax.errors import UserError  # pylint: disable=g-import-not-at-top

__all__ = [
  "DatasetNotAvailableError",
  "DatasetSpec",
  "VALID_NAMES",
  "check_available",
  "dataset_spec",
  "epoch_permutation",
  "eval_arrays",
  "global_batch_indices",
  "resolve_data_dir",
  "train_iterator",
  "validate_batch",
]

VALUE_RANGE_TOLERANCE = 1e-3
IN_MEMORY_MAX_BYTES = 1 << 30
SHUFFLE_BUFFER = 10_000  # examples, tf.data path
DEFAULT_TFDS_DATA_DIR = "~/tensorflow_datasets"
DEFAULT_EMBEDDED_DATA_DIR = "~/.cache/cfg_jax/tensorflow_datasets"
_READ_CHUNK = 1024  # Examples per data-source read when loading into memory.
_SEED_TAG_PERMUTATION = 0
_SEED_TAG_FLIP = 1


class DatasetNotAvailableError(UserError, ValueError):
  """The dataset is not prepared in the data dir and cannot be fetched here."""


class BadBatchError(UserError, ValueError):
  """A batch of the input pipeline does not have the dataset's shapes, dtypes or value ranges."""


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
    ensure: for the embedded datasets, ``ensure(data_dir) -> builder`` builds
      them offline into the data dir on first use.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  train_split: str
  eval_split: str
  config_name: str = ""
  crop_size: int | None = None
  flip_invariant: bool = True
  ensure: Callable[[str], Any] | None = None


_SPECS: dict[str, DatasetSpec] = {
  "digits": DatasetSpec(
    name=digits_lib.DIGITS_NAME,
    image_shape=(8, 8, 1),
    num_classes=10,
    train_split="train",
    eval_split="test",
    config_name="digits",
    flip_invariant=False,
    ensure=digits_lib.ensure_digits,
  ),
  "mnist": DatasetSpec(
    name=mnist_lib.MNIST_NAME,
    image_shape=(28, 28, 1),
    num_classes=10,
    train_split="train",
    eval_split="test",
    config_name="mnist",
    flip_invariant=False,
    ensure=mnist_lib.ensure_mnist,
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


# ----------------------------------------------------------------------------
# Specs, data dirs, availability.
# ----------------------------------------------------------------------------


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
    if dataset_spec(data_config).ensure is not None:
      data_dir = DEFAULT_EMBEDDED_DATA_DIR
    else:
      data_dir = os.environ.get("TFDS_DATA_DIR") or DEFAULT_TFDS_DATA_DIR
  data_dir = os.fspath(data_dir)
  if "://" in data_dir:
    return data_dir.rstrip("/")
  return os.path.abspath(os.path.expanduser(data_dir))


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
  if spec.ensure is not None:
    return spec.ensure(data_dir)
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
  return _checked_builder(data_config)[0]


def _checked_builder(data_config: Any):
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


# ----------------------------------------------------------------------------
# Deterministic indexing (random-access path).
# ----------------------------------------------------------------------------


def _seed_word(seed: int) -> int:
  return int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy.


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The (read-only) permutation of ``range(num_examples)`` for `epoch`."""
  rng = np.random.default_rng(
    np.random.SeedSequence([_seed_word(seed), _SEED_TAG_PERMUTATION, epoch])
  )
  perm = rng.permutation(num_examples)
  perm.flags.writeable = False
  return perm


def global_batch_indices(
  num_examples: int, global_batch_size: int, seed: int, step: int
) -> np.ndarray:
  """Example indices of the global batch at `step` (int64 [global_batch]).

  Position ``q = step * global_batch_size + j`` in the endless stream is
  example ``epoch_permutation(N, seed, q // N)[q % N]``.
  """
  if num_examples <= 0:
    raise ValueError("The train split is empty.")
  positions = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(global_batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = epoch_permutation(num_examples, seed, int(epoch))[offsets[sel]]
  return out


def _flip_mask(global_batch_size: int, seed: int, step: int) -> np.ndarray:
  """Which examples of the global batch at `step` get flipped (bool)."""
  rng = np.random.default_rng(np.random.SeedSequence([_seed_word(seed), _SEED_TAG_FLIP, step]))
  return rng.random(global_batch_size) < 0.5


# ----------------------------------------------------------------------------
# Numpy preprocessing.
# ----------------------------------------------------------------------------


def _to_float(images_u8: np.ndarray) -> np.ndarray:
  """uint8 [.., H, W, C] -> float32 in [-1, 1]."""
  # Same float32 ops as the tf.data path, so both give identical values.
  return images_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


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


class _SourceReader:
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
  reader = _SourceReader(tfds.builder_from_directory(prepared_dir), split, spec)
  images = np.empty((count, *spec.image_shape), np.uint8)
  labels = np.empty((count,), np.int32)
  for start in range(0, count, _READ_CHUNK):
    idx = np.arange(start, min(count, start + _READ_CHUNK))
    images[idx], labels[idx] = reader.get(idx)
  images.flags.writeable = False
  labels.flags.writeable = False
  return _InMemory(images, labels)


def _is_random_access(builder) -> bool:
  formats = builder.info.available_file_formats()
  return tfds.core.FileFormat.ARRAY_RECORD in formats


def _random_access_reader(builder, split: str, spec: DatasetSpec):
  """In-memory copy of the split if small enough, else a streaming reader."""
  count = builder.info.splits[split].num_examples
  if count * int(np.prod(spec.image_shape)) <= IN_MEMORY_MAX_BYTES:
    return _load_in_memory(os.fspath(builder.data_dir), split, spec, count)
  return _SourceReader(builder, split, spec)


_PREFETCH_DONE = object()


def _prefetch_worker(iterator, out: queue.Queue, stop: threading.Event) -> None:
  """Feeds `out` with (item, error) pairs until exhausted or `stop` is set."""

  def put(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  try:
    for item in iterator:
      if not put((item, None)):
        return
  except BaseException as e:  # pylint: disable=broad-except
    put((None, e))
    return
  put((_PREFETCH_DONE, None))


class _Prefetch:
  """Runs an iterator in a daemon thread, `size` items ahead.

  The thread holds no reference to this object, so dropping the iterator
  (garbage collection) or calling close() stops the thread.
  """

  def __init__(self, iterator: Iterator[Any], size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    threading.Thread(
      target=_prefetch_worker,
      args=(iterator, self._queue, self._stop),
      name="cfg_jax-data-prefetch",
      daemon=True,
    ).start()

  def __iter__(self):
    return self

  def __next__(self):
    item, error = self._queue.get()
    if error is not None:
      raise error
    if item is _PREFETCH_DONE:
      self._queue.put((_PREFETCH_DONE, None))  # Stay exhausted.
      raise StopIteration
    return item

  def close(self) -> None:
    self._stop.set()

  def __del__(self):
    self.close()


def _random_access_batches(
  reader,
  *,
  global_batch_size: int,
  local_batch_size: int,
  seed: int,
  start_step: int,
  process_index: int,
  random_flip: bool,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches from `start_step` on (see module docstring)."""
  lo = process_index * local_batch_size
  hi = lo + local_batch_size
  n = len(reader)
  step = start_step
  while True:
    indices = global_batch_indices(n, global_batch_size, seed, step)[lo:hi]
    images_u8, labels = reader.get(indices)
    images = _to_float(images_u8)
    if random_flip:
      flip = _flip_mask(global_batch_size, seed, step)[lo:hi]
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    yield {"image": images, "label": np.asarray(labels, np.int32)}
    step += 1


# ----------------------------------------------------------------------------
# tf.data path (tfrecord).
# ----------------------------------------------------------------------------


def _import_tf():
  """Imports TensorFlow for tf.data only, hiding any GPU from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Devices already initialised (set earlier).
    pass
  return tf


def _tf_preprocess_fn(tf, builder, spec: DatasetSpec) -> Callable:
  """Returns example(encoded image) -> (float32 image in [-1,1], int32 label)."""
  image_feature = builder.info.features["image"]

  def fn(example):
    image = image_feature.decode_example(example["image"])
    if spec.crop_size is not None:
      size = spec.crop_size
      hw = tf.cast(tf.shape(image)[:2], tf.float32)
      new_hw = tf.maximum(tf.cast(tf.round(hw * (size / tf.reduce_min(hw))), tf.int32), size)
      image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
      top = (new_hw[0] - size) // 2
      left = (new_hw[1] - size) // 2
      image = image[top : top + size, left : left + size]
      image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    image = tf.cast(image, tf.float32) / 127.5 - 1.0
    image = tf.ensure_shape(image, spec.image_shape)
    return image, tf.cast(example["label"], tf.int32)

  return fn


def _tf_options(tf):
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
  return options


def _tfrecord_batches(
  builder,
  spec: DatasetSpec,
  *,
  local_batch_size: int,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
  random_flip: bool,
) -> Iterator[dict[str, np.ndarray]]:
  """tf.data pipeline over this process's shard (see module docstring)."""
  tf = _import_tf()
  split = tfds.even_splits(spec.train_split, n=process_count, drop_remainder=True)[process_index]
  process_seed = int(
    np.random.SeedSequence([_seed_word(seed), process_index]).generate_state(1)[0] & 0x7FFFFFFF
  )
  ds = builder.as_dataset(
    split=split,
    # Ordered datasets (e.g. cfg_digits) refuse file shuffling; the example
    # shuffle buffer below still shuffles them.
    shuffle_files=not builder.info.disable_shuffling,
    decoders={"image": tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(shuffle_seed=process_seed, options=_tf_options(tf)),
  )
  ds = ds.repeat().shuffle(SHUFFLE_BUFFER, seed=process_seed, reshuffle_each_iteration=True)
  # Skip whole batches on still-encoded examples (cheaper than after decoding).
  ds = ds.skip(start_step * local_batch_size)
  ds = ds.map(_tf_preprocess_fn(tf, builder, spec), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if random_flip:
    ds = ds.enumerate(start=start_step)

    def flip(step, batch):
      image, label = batch
      image = tf.image.stateless_random_flip_left_right(
        image, seed=tf.stack([tf.constant(process_seed, tf.int64), step])
      )
      return image, label

    ds = ds.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_tf_options(tf))
  for image, label in tfds.as_numpy(ds):
    yield {"image": image, "label": label}


# ----------------------------------------------------------------------------
# Public iterators.
# ----------------------------------------------------------------------------


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}.")
  if global_batch_size < 1:
    raise ValueError(f"training.batch_size must be positive, got {global_batch_size}.")
  if global_batch_size % process_count:
    raise ValueError(
      f"training.batch_size={global_batch_size} (the global batch) must be "
      f"divisible by the number of processes ({process_count})."
    )
  return global_batch_size // process_count


def _random_flip(data_config, spec: DatasetSpec) -> bool:
  flip = bool(getattr(data_config, "random_flip", False))
  if flip and not spec.flip_invariant:
    raise ValueError(
      f"data.random_flip=True is not allowed for data.name="
      f"{spec.config_name!r}: its images are not flip-invariant."
    )
  return flip


def _validated(
  batches: Iterator[dict[str, np.ndarray]], spec: DatasetSpec
) -> Iterator[dict[str, np.ndarray]]:
  """Full check of the first batch, shape/dtype/label checks of the rest."""
  for i, batch in enumerate(batches):
    validate_batch(batch, spec, check_values=(i == 0))
    yield batch


def train_iterator(
  data_config: Any,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches for this process, from `start_step` on.

  Args:
    data_config: ``config.data``, or any object with a ``name`` (optional
      ``data_dir``, ``random_flip``).
    global_batch_size: ``training.batch_size`` over all processes.
    seed: data seed; with the step it fully determines each batch on the
      random-access (array_record) path.
    start_step: index of the first batch to produce (for resuming).
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes (hosts) sharing the global batch.

  Returns:
    An iterator of ``{'image': float32 [local_batch, H, W, C] in [-1, 1],
    'label': int32 [local_batch]}`` with
    ``local_batch = global_batch_size // process_count``.

  Raises:
    ValueError: bad batch size / process arguments / flip setting.
    DatasetNotAvailableError: the dataset is not prepared in the data dir.
  """
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  spec, builder = _checked_builder(data_config)
  random_flip = _random_flip(data_config, spec)
  if _is_random_access(builder):
    reader = _random_access_reader(builder, spec.train_split, spec)
    batches = _random_access_batches(
      reader,
      global_batch_size=global_batch_size,
      local_batch_size=local_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      random_flip=random_flip,
    )
    if isinstance(reader, _SourceReader):
      batches = _Prefetch(batches)
  else:
    batches = _tfrecord_batches(
      builder,
      spec,
      local_batch_size=local_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
      random_flip=random_flip,
    )
  return _validated(batches, spec)


def eval_arrays(
  data_config: Any, *, split: str | None = None, max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The first `max_examples` (default: all) examples of a split, in memory.

  Examples come in storage order (no shuffling), so the subset is fixed.

  Returns:
    (images float32 [N, H, W, C] in [-1, 1], labels int32 [N]).
  """
  spec, builder = _checked_builder(data_config)
  split = split or spec.eval_split
  if split not in builder.info.splits:
    raise ValueError(
      f"Split {split!r} not in {spec.name!r}; available: {sorted(builder.info.splits)}."
    )
  total = builder.info.splits[split].num_examples
  count = total if max_examples is None else max(0, min(int(max_examples), total))
  if _is_random_access(builder):
    reader = _random_access_reader(builder, split, spec)
    images_u8, labels = reader.get(np.arange(count))
    images = _to_float(images_u8)
  else:
    tf = _import_tf()
    ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(options=_tf_options(tf), try_autocache=False),
    )
    ds = ds.take(count).map(
      _tf_preprocess_fn(tf, builder, spec), num_parallel_calls=tf.data.AUTOTUNE
    )
    images = np.zeros((count, *spec.image_shape), np.float32)
    labels = np.zeros((count,), np.int32)
    pos = 0
    for image, label in tfds.as_numpy(ds.batch(256)):
      images[pos : pos + len(label)], labels[pos : pos + len(label)] = image, label
      pos += len(label)
    images, labels = images[:pos], labels[:pos]
  result = {"image": images, "label": np.asarray(labels, np.int32)}
  if count:
    validate_batch(result, spec)
  return result["image"], result["label"]


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


def validate_batch(
  batch: Mapping[str, Any], spec: DatasetSpec, *, check_values: bool = True
) -> None:
  """Raises BadBatchError unless `batch` is a well-formed batch of `spec`.

  Always checks keys, image shape ``[B, *spec.image_shape]`` and float32
  dtype, labels of integer dtype and shape ``[B]`` in ``[0, num_classes)``.
  With `check_values` also that pixel values are finite and in [-1, 1] (up to
  1e-3). Works on numpy and JAX arrays.
  """
  where = f"Bad batch for dataset {spec.name!r}"
  if not isinstance(batch, Mapping) or not {"image", "label"} <= set(batch):
    keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise BadBatchError(f"{where}: expected a dict with 'image' and 'label', got {keys}.")
  image, label = batch["image"], batch["label"]
  shape = tuple(getattr(image, "shape", ()))
  if len(shape) != 4 or shape[1:] != tuple(spec.image_shape):
    raise BadBatchError(
      f"{where}: image shape {shape}, expected (batch, {', '.join(map(str, spec.image_shape))})."
    )
  if np.dtype(image.dtype) != np.float32:
    raise BadBatchError(f"{where}: image dtype {image.dtype}, expected float32.")
  if shape[0] == 0:
    raise BadBatchError(f"{where}: empty batch.")
  label_shape = tuple(getattr(label, "shape", ()))
  if label_shape != (shape[0],):
    raise BadBatchError(f"{where}: label shape {label_shape}, expected ({shape[0]},).")
  if not np.issubdtype(np.dtype(label.dtype), np.integer):
    raise BadBatchError(f"{where}: label dtype {label.dtype}, expected integer.")
  lo, hi = int(label.min()), int(label.max())
  if lo < 0 or hi >= spec.num_classes:
    raise BadBatchError(f"{where}: labels span [{lo}, {hi}], expected in [0, {spec.num_classes}).")
  if check_values:
    values = np.asarray(image)
    vmin, vmax = float(values.min()), float(values.max())
    tol = VALUE_RANGE_TOLERANCE
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
      raise BadBatchError(f"{where}: image contains NaN or inf.")
    if vmin < -1 - tol or vmax > 1 + tol:
      raise BadBatchError(
        f"{where}: image values span [{vmin:.4g}, {vmax:.4g}], expected [-1, 1] (tolerance {tol})."
      )
