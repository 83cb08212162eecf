"""The tf.data path for datasets prepared as tfrecord: a seeded, per-process sharded pipeline
(resume skips batches) and in-memory eval arrays; the only data module that imports TensorFlow."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cfg_jax.data.specs import DatasetSpec

# Environment defaults for when TensorFlow gets imported: quiet C++ INFO logs, and never
# pre-allocate GPU memory that JAX needs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

SHUFFLE_BUFFER = 10_000  # examples


def seed_word(seed: int) -> int:
  return int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy.


def import_tf():
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


def tfrecord_batches(
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
  tf = import_tf()
  split = tfds.even_splits(spec.train_split, n=process_count, drop_remainder=True)[process_index]
  process_seed = int(
    np.random.SeedSequence([seed_word(seed), process_index]).generate_state(1)[0] & 0x7FFFFFFF
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


def eval_arrays(builder, spec: DatasetSpec, *, split: str, count: int):
  """The first `count` examples of `split` in storage order: (float32 images, int32 labels)."""
  tf = import_tf()
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={"image": tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(options=_tf_options(tf), try_autocache=False),
  )
  ds = ds.take(count).map(_tf_preprocess_fn(tf, builder, spec), num_parallel_calls=tf.data.AUTOTUNE)
  images = np.zeros((count, *spec.image_shape), np.float32)
  labels = np.zeros((count,), np.int32)
  pos = 0
  for image, label in tfds.as_numpy(ds.batch(256)):
    images[pos : pos + len(label)], labels[pos : pos + len(label)] = image, label
    pos += len(label)
  return images[:pos], labels[:pos]
