"""Input pipelines: endless training batches and in-memory eval arrays of any dataset.

Batches are `{'image': float32 [B,H,W,C] in [-1, 1], 'label': int32 [B]}`. Datasets prepared as
`array_record` get an exactly resumable random-access pipeline (the batch at step s is a function
of (seed, s)); `tfrecord` ones get the seeded tf.data pipeline of `tfdata.py`. The determinism and
resume rules of both paths are in docs/data.md.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cfg_jax.data import sources, tfdata
from cfg_jax.data.specs import DatasetSpec
from cfg_jax.errors import UserError

VALUE_RANGE_TOLERANCE = 1e-3
_SEED_TAG_PERMUTATION = 0
_SEED_TAG_FLIP = 1
_seed_word = tfdata.seed_word


class BadBatchError(UserError, ValueError):
  """A batch of the input pipeline does not have the dataset's shapes, dtypes or value ranges."""


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


def _to_float(images_u8: np.ndarray) -> np.ndarray:
  """uint8 [.., H, W, C] -> float32 in [-1, 1]."""
  # Same float32 ops as the tf.data path, so both give identical values.
  return images_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


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
  spec, builder = sources.checked_builder(data_config)
  random_flip = _random_flip(data_config, spec)
  if sources.is_random_access(builder):
    reader = sources.random_access_reader(builder, spec.train_split, spec)
    batches = _random_access_batches(
      reader,
      global_batch_size=global_batch_size,
      local_batch_size=local_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      random_flip=random_flip,
    )
    if isinstance(reader, sources.SourceReader):
      batches = _Prefetch(batches)
  else:
    batches = tfdata.tfrecord_batches(
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
  spec, builder = sources.checked_builder(data_config)
  split = split or spec.eval_split
  if split not in builder.info.splits:
    raise ValueError(
      f"Split {split!r} not in {spec.name!r}; available: {sorted(builder.info.splits)}."
    )
  total = builder.info.splits[split].num_examples
  count = total if max_examples is None else max(0, min(int(max_examples), total))
  if sources.is_random_access(builder):
    reader = sources.random_access_reader(builder, split, spec)
    images_u8, labels = reader.get(np.arange(count))
    images = _to_float(images_u8)
  else:
    images, labels = tfdata.eval_arrays(builder, spec, split=split, count=count)
  result = {"image": images, "label": np.asarray(labels, np.int32)}
  if count:
    validate_batch(result, spec)
  return result["image"], result["label"]


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
