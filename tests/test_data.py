"""Data layer: the offline cfg_digits dataset, input pipelines, validation."""

import gc
import hashlib
import os
import shutil
import socket
import threading
import time
import types

import ml_collections
import numpy as np
import pytest

from cfg_jax import data
from cfg_jax.data import digits, pipeline, sources, specs, tfdata
from cfg_jax.data import digits as digits_lib

# Regression values of the fixed split (cfg_digits 1.0.0). A change here means
# the dataset changed: bump CfgDigits.VERSION and document why.
TEST_FIRST_LABELS = [4, 5, 6, 9, 4, 7, 8, 9, 6, 9, 9, 1]
TEST_IMAGES_SHA256 = "8fa26eed24ba493416c7cebd2ce6dc1fe76c45fd3d9be352187a8771671a78c8"
TRAIN_IMAGES_SHA256 = "f3d7bf33cccedd2b3779ec7eca816f784ba6f634c661e52244118d276302c69b"


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(name="digits", random_flip=False), **kw))


def _source_arrays(builder, split):
  src = builder.as_data_source(split)
  examples = src.__getitems__(list(range(len(src))))
  images = np.stack([ex["image"] for ex in examples])
  labels = np.asarray([ex["label"] for ex in examples], np.int64)
  return images, labels


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds_digits"))
  start = time.perf_counter()
  digits.ensure_digits(path)
  assert time.perf_counter() - start < 30  # ~2 s here; generous for slow CI.
  return path


@pytest.fixture(scope="session")
def digits_cfg(digits_dir):
  return _cfg(data_dir=digits_dir)


@pytest.fixture(scope="session")
def train_arrays(digits_cfg):
  return pipeline.eval_arrays(digits_cfg, split="train")


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------


def test_digits_split_sizes_shapes_range(digits_dir, digits_cfg):
  builder = digits.ensure_digits(digits_dir)
  assert builder.name == "cfg_digits"
  assert str(builder.version) == "1.0.0"
  assert builder.info.splits["train"].num_examples == 1497
  assert builder.info.splits["test"].num_examples == 300
  assert builder.info.features["image"].shape == (8, 8, 1)
  assert builder.info.features["label"].num_classes == 10
  for split, n in (("train", 1497), ("test", 300)):
    images, labels = pipeline.eval_arrays(digits_cfg, split=split)
    assert images.shape == (n, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))
  # Default eval split is test; max_examples takes a prefix.
  images, labels = pipeline.eval_arrays(digits_cfg, max_examples=7)
  assert images.shape == (7, 8, 8, 1)
  assert labels.tolist() == TEST_FIRST_LABELS[:7]


def test_digits_pixel_scaling_matches_sklearn(digits_dir):
  from sklearn.datasets import load_digits

  raw = load_digits()
  builder = digits.ensure_digits(digits_dir)
  idx = digits_lib.digits_split_indices()
  assert len(np.intersect1d(idx["train"], idx["test"])) == 0
  assert len(idx["train"]) + len(idx["test"]) == 1797
  for split in ("train", "test"):
    images, labels = _source_arrays(builder, split)
    expected = np.round(raw.images[idx[split]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(images[..., 0], expected)
    np.testing.assert_array_equal(labels, raw.target[idx[split]])


def test_digits_split_is_fixed_across_builds(digits_dir, tmp_path):
  other = digits.ensure_digits(str(tmp_path / "second"))
  first = digits.ensure_digits(digits_dir)
  for split, sha in (("test", TEST_IMAGES_SHA256), ("train", TRAIN_IMAGES_SHA256)):
    a_images, a_labels = _source_arrays(first, split)
    b_images, b_labels = _source_arrays(other, split)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert hashlib.sha256(a_images.tobytes()).hexdigest() == sha
  assert _source_arrays(first, "test")[1][:12].tolist() == TEST_FIRST_LABELS


def test_ensure_digits_second_call_is_noop(digits_dir):
  version_dir = os.path.join(digits_dir, "cfg_digits", "1.0.0")
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  start = time.perf_counter()
  builder = digits.ensure_digits(digits_dir)
  assert time.perf_counter() - start < 0.5
  assert builder.is_prepared()
  after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  assert before == after
  assert any(f.startswith("cfg_digits-train.array_record") for f in after)


def test_check_available_digits(digits_cfg):
  spec = sources.check_available(digits_cfg)
  assert spec == data.dataset_spec(digits_cfg)


# ---------------------------------------------------------------------------
# Specs and config handling.
# ---------------------------------------------------------------------------


def test_dataset_specs():
  expected = {
    "digits": ("cfg_digits", (8, 8, 1), 10),
    "mnist": ("cfg_mnist", (28, 28, 1), 10),
    "cifar10": ("cifar10", (32, 32, 3), 10),
    "imagenet64": ("imagenet_resized/64x64", (64, 64, 3), 1000),
    "imagenet128": ("imagenet2012", (128, 128, 3), 1000),
  }
  assert set(data.VALID_NAMES) == set(expected)
  for name, (tfds_name, shape, classes) in expected.items():
    spec = data.dataset_spec(types.SimpleNamespace(name=name))
    assert (spec.name, spec.image_shape, spec.num_classes) == (tfds_name, shape, classes)
    assert spec.train_split == "train"
  assert data.dataset_spec(_cfg(name="imagenet128")).crop_size == 128


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match=r"data\.name.*svhn.*digits, mnist, cifar10"):
    data.dataset_spec(_cfg(name="svhn"))
  with pytest.raises(ValueError, match=r"data\.name"):
    pipeline.train_iterator(_cfg(name="svhn"), global_batch_size=8, seed=0)


def test_resolve_data_dir_defaults(monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  home = os.path.expanduser("~")
  assert data.resolve_data_dir(_cfg(data_dir="")) == os.path.join(
    home, ".cache", "cfg_jax", "tensorflow_datasets"
  )
  assert data.resolve_data_dir(types.SimpleNamespace(name="cifar10")) == os.path.join(
    home, "tensorflow_datasets"
  )
  assert data.resolve_data_dir(_cfg(name="cifar10", data_dir="/x/y")) == "/x/y"
  assert (
    data.resolve_data_dir(_cfg(name="imagenet64", data_dir="gs://bucket/tfds/"))
    == "gs://bucket/tfds"
  )


@pytest.mark.parametrize(
  "name, needles",
  [
    ("cifar10", ["'cifar10'", "tfds build cifar10", "data.data_dir"]),
    ("imagenet64", ["imagenet_resized/64x64", "tfds build imagenet_resized/64x64"]),
    (
      "imagenet128",
      [
        "imagenet2012",
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "downloads/manual",
        "tfds build imagenet2012",
      ],
    ),
  ],
)
def test_check_available_missing_dataset(name, needles, tmp_path, no_network):
  empty = tmp_path / "empty"
  empty.mkdir()
  cfg = _cfg(name=name, data_dir=str(empty))
  start = time.perf_counter()
  with pytest.raises(sources.DatasetNotAvailableError) as excinfo:
    sources.check_available(cfg)
  assert time.perf_counter() - start < 1.0
  assert isinstance(excinfo.value, ValueError)
  message = str(excinfo.value)
  for needle in needles + [str(empty)]:
    assert needle in message, (needle, message)
  assert os.listdir(empty) == []  # Nothing written, nothing downloaded.
  with pytest.raises(sources.DatasetNotAvailableError):
    pipeline.train_iterator(cfg, global_batch_size=8, seed=0)
  with pytest.raises(sources.DatasetNotAvailableError):
    pipeline.eval_arrays(cfg, max_examples=4)


def test_find_prepared_dir_and_feature_check(digits_dir, tmp_path):
  # A prepared dataset is found under <data_dir>/<tfds name>/<newest x.y.z>.
  base = tmp_path / "tfds" / "cifar10"
  for version in ("1.0.0", "3.0.2", "10.0.0.incomplete.XYZ", "2.0.0"):
    (base / version).mkdir(parents=True)
  for version in ("1.0.0", "2.0.0"):
    (base / version / "dataset_info.json").write_text("{}")
  found = sources._find_prepared_dir(str(tmp_path / "tfds"), "cifar10")
  assert found == str(base / "2.0.0")  # 3.0.2 has no dataset_info.json.
  # A prepared dir with the wrong features is rejected with a clear message.
  fake = tmp_path / "wrong" / "cifar10" / "3.0.2"
  shutil.copytree(os.path.join(digits_dir, "cfg_digits", "1.0.0"), fake)
  with pytest.raises(ValueError, match=r"shape \(8, 8, 1\).*\(32, 32, 3\)"):
    sources.check_available(_cfg(name="cifar10", data_dir=str(tmp_path / "wrong")))


# ---------------------------------------------------------------------------
# train_iterator (random-access path).
# ---------------------------------------------------------------------------


def test_train_iterator_batches_and_determinism(digits_cfg):
  batches = _take(pipeline.train_iterator(digits_cfg, global_batch_size=32, seed=1), 4)
  for b in batches:
    assert b["image"].shape == (32, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (32,) and b["label"].dtype == np.int32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  again = _take(pipeline.train_iterator(digits_cfg, global_batch_size=32, seed=1), 4)
  _assert_batches_equal(batches, again)
  other = next(pipeline.train_iterator(digits_cfg, global_batch_size=32, seed=2))
  assert not np.array_equal(other["label"], batches[0]["label"])
  assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_train_iterator_resume(digits_cfg):
  full = _take(pipeline.train_iterator(digits_cfg, global_batch_size=64, seed=5), 30)
  resumed = _take(
    pipeline.train_iterator(digits_cfg, global_batch_size=64, seed=5, start_step=21), 9
  )
  _assert_batches_equal(full[21:], resumed)  # Crosses the epoch boundary.


def test_train_iterator_process_sharding(digits_cfg):
  steps, start = 4, 22  # 22 * 64 = 1408 < 1497 < 23 * 64: includes the wrap.
  single = _take(
    pipeline.train_iterator(digits_cfg, global_batch_size=64, seed=9, start_step=start), steps
  )
  parts = [
    _take(
      pipeline.train_iterator(
        digits_cfg, global_batch_size=64, seed=9, start_step=start, process_index=p, process_count=2
      ),
      steps,
    )
    for p in range(2)
  ]
  for s in range(steps):
    assert parts[0][s]["image"].shape == (32, 8, 8, 1)
    for key in ("image", "label"):
      np.testing.assert_array_equal(
        np.concatenate([parts[0][s][key], parts[1][s][key]]), single[s][key]
      )


def test_train_iterator_epoch_wrap(digits_cfg, train_arrays):
  images, labels = train_arrays
  n, batch, seed = 1497, 500, 3
  got = _take(pipeline.train_iterator(digits_cfg, global_batch_size=batch, seed=seed), 4)
  idx = np.concatenate([pipeline.global_batch_indices(n, batch, seed, s) for s in range(4)])
  # Epoch 0 visits every train example exactly once, then epoch 1 starts.
  np.testing.assert_array_equal(np.sort(idx[:n]), np.arange(n))
  np.testing.assert_array_equal(idx[n:], pipeline.epoch_permutation(n, seed, 1)[: len(idx) - n])
  assert not np.array_equal(idx[n : 2 * n], idx[: len(idx) - n])  # Fresh order.
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in got]), images[idx])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in got]), labels[idx])
  # A global batch larger than the dataset spans several epochs.
  big = next(pipeline.train_iterator(digits_cfg, global_batch_size=4000, seed=seed))
  assert big["image"].shape == (4000, 8, 8, 1)
  assert np.bincount(big["label"], minlength=10).min() > 0


def test_train_iterator_streaming_reader_matches_in_memory(digits_cfg, monkeypatch):
  in_memory = _take(
    pipeline.train_iterator(digits_cfg, global_batch_size=16, seed=4, start_step=90), 3
  )

  def fail(*args):
    raise AssertionError("in-memory load used despite IN_MEMORY_MAX_BYTES=0")

  monkeypatch.setattr(sources, "_load_in_memory", fail)
  monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
  it = pipeline.train_iterator(digits_cfg, global_batch_size=16, seed=4, start_step=90)
  streamed = _take(it, 3)
  _assert_batches_equal(streamed, in_memory)
  # Dropping the iterator stops its prefetch thread.
  assert any(t.name == "cfg_jax-data-prefetch" for t in threading.enumerate())
  del it
  gc.collect()
  deadline = time.monotonic() + 5
  while any(t.name == "cfg_jax-data-prefetch" for t in threading.enumerate()):
    assert time.monotonic() < deadline, "prefetch thread still running"
    time.sleep(0.05)


def test_train_iterator_argument_errors(digits_cfg):
  with pytest.raises(ValueError, match=r"training\.batch_size"):
    pipeline.train_iterator(digits_cfg, global_batch_size=30, seed=0, process_count=4)
  with pytest.raises(ValueError, match=r"training\.batch_size"):
    pipeline.train_iterator(digits_cfg, global_batch_size=0, seed=0)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.train_iterator(
      digits_cfg, global_batch_size=8, seed=0, process_index=2, process_count=2
    )
  with pytest.raises(ValueError, match="start_step"):
    pipeline.train_iterator(digits_cfg, global_batch_size=8, seed=0, start_step=-1)
  flip_cfg = _cfg(data_dir=digits_cfg.data_dir, random_flip=True)
  with pytest.raises(ValueError, match=r"data\.random_flip"):
    pipeline.train_iterator(flip_cfg, global_batch_size=8, seed=0)


def test_minimal_config_object(digits_dir):
  cfg = types.SimpleNamespace(name="digits", data_dir=digits_dir)
  batch = next(pipeline.train_iterator(cfg, global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 8, 8, 1)


def test_random_flip_deterministic_and_sharded(train_arrays):
  images, labels = train_arrays
  reader = sources._InMemory(((images + 1) * 127.5).round().astype(np.uint8), labels)

  def run(start, p=0, count=1, n_steps=3):
    gen = pipeline._random_access_batches(
      reader,
      global_batch_size=64,
      local_batch_size=64 // count,
      seed=7,
      start_step=start,
      process_index=p,
      random_flip=True,
    )
    return _take(gen, n_steps)

  flipped = run(0)
  _assert_batches_equal(flipped, run(0))
  _assert_batches_equal(flipped[1:], run(1, n_steps=2))
  halves = [run(0, p, 2) for p in range(2)]
  for s in range(3):
    np.testing.assert_array_equal(
      np.concatenate([halves[0][s]["image"], halves[1][s]["image"]]), flipped[s]["image"]
    )
  idx = pipeline.global_batch_indices(len(labels), 64, 7, 0)
  plain, mirrored = images[idx], images[idx][:, :, ::-1]
  is_plain = np.all(flipped[0]["image"] == plain, axis=(1, 2, 3))
  is_mirror = np.all(flipped[0]["image"] == mirrored, axis=(1, 2, 3))
  assert np.all(is_plain | is_mirror)
  assert 10 < np.sum(~is_plain) < 54  # About half are flipped.


# ---------------------------------------------------------------------------
# tf.data path (dataset prepared as tfrecord).
# ---------------------------------------------------------------------------


def test_tfrecord_path(tmp_path, digits_cfg):
  tf_dir = str(tmp_path / "tfrecord")
  digits_lib.CfgDigits(data_dir=tf_dir).download_and_prepare(file_format="tfrecord")
  cfg = _cfg(data_dir=tf_dir)
  assert not sources.is_random_access(digits.ensure_digits(tf_dir))
  batches = _take(pipeline.train_iterator(cfg, global_batch_size=64, seed=3), 5)
  for b in batches:
    assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32
  _assert_batches_equal(
    batches, _take(pipeline.train_iterator(cfg, global_batch_size=64, seed=3), 5)
  )
  _assert_batches_equal(
    batches[2:], _take(pipeline.train_iterator(cfg, global_batch_size=64, seed=3, start_step=2), 3)
  )
  half = next(
    pipeline.train_iterator(cfg, global_batch_size=64, seed=3, process_index=1, process_count=2)
  )
  assert half["image"].shape == (32, 8, 8, 1)
  # Same eval data as the array_record build, in the same order.
  images, labels = pipeline.eval_arrays(cfg, max_examples=50)
  ref_images, ref_labels = pipeline.eval_arrays(digits_cfg, max_examples=50)
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)


def test_resize_center_crop_numpy_and_tf_agree():
  yy, xx = np.mgrid[0:150, 0:100]
  image = np.stack([xx * 255 / 100, yy * 255 / 150, (xx + yy) * 255 / 250], -1).astype(np.uint8)
  out = sources._resize_center_crop_np(image, 64)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  exact = image[:64, :70]
  np.testing.assert_array_equal(sources._resize_center_crop_np(exact, 64), exact[:, 3:67])

  tf = tfdata.import_tf()
  spec = specs.DatasetSpec("fake", (64, 64, 3), 10, "train", "test", crop_size=64)
  builder = types.SimpleNamespace(
    info=types.SimpleNamespace(
      features={"image": types.SimpleNamespace(decode_example=lambda x: x)}
    )
  )
  tf_image, tf_label = tfdata._tf_preprocess_fn(tf, builder, spec)(
    {"image": tf.constant(image), "label": tf.constant(3, tf.int64)}
  )
  assert int(tf_label) == 3
  tf_u8 = (tf_image.numpy() + 1) * 127.5
  assert np.abs(tf_u8 - out).max() <= 2.0  # PIL vs TF bicubic, both antialiased.


# ---------------------------------------------------------------------------
# validate_batch.
# ---------------------------------------------------------------------------


def test_validate_batch():
  spec = data.dataset_spec(_cfg())
  good = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": np.arange(4, dtype=np.int32)}
  pipeline.validate_batch(good, spec)
  pipeline.validate_batch(dict(good, image=np.full((4, 8, 8, 1), 1.0005, np.float32)), spec)

  def bad(match, check_values=True, **changes):
    with pytest.raises(ValueError, match=match):
      pipeline.validate_batch(dict(good, **changes), spec, check_values=check_values)

  bad("image shape", image=np.zeros((4, 8, 8, 3), np.float32))
  bad("image shape", image=np.zeros((8, 8, 1), np.float32))
  bad("dtype", image=np.zeros((4, 8, 8, 1), np.float64))
  bad("dtype", image=np.zeros((4, 8, 8, 1), np.uint8))
  bad(r"\[-1, 1\]", image=np.full((4, 8, 8, 1), 1.01, np.float32))
  bad(r"\[-1, 1\]", image=np.full((4, 8, 8, 1), -1.5, np.float32))
  bad("NaN", image=np.full((4, 8, 8, 1), np.nan, np.float32))
  bad("labels", label=np.array([0, 1, 2, 10], np.int32))
  bad("labels", check_values=False, label=np.array([0, -1, 2, 3], np.int32))
  bad("label shape", label=np.arange(3, dtype=np.int32))
  bad("label dtype", label=np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="'image' and 'label'"):
    pipeline.validate_batch({"image": good["image"]}, spec)
  # Value checks are skipped when asked (cheap per-batch check).
  pipeline.validate_batch(
    dict(good, image=np.full((4, 8, 8, 1), 3.0, np.float32)), spec, check_values=False
  )
