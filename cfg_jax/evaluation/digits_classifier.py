"""In-domain feature network for the embedded digits datasets: classifier FD, score and accuracy.

These are *digits-classifier metrics*, NOT Inception FID or the Inception score. A small CNN
(`DigitsNet`) is trained deterministically on the train split of an embedded dataset (`RECIPES`:
the 1,497 8x8 `cfg_digits` images, or the 4,000 28x28 `cfg_mnist` images); for generated digits

* its 128-d penultimate activations (`features`) replace Inception pool_3 in the Fréchet distance
  (`metrics.feature_statistics` + `metrics.frechet_distance`),
* its 10-way `logits` replace the Inception logits in the Inception-style score
  (`metrics.inception_score`),
* its argmax gives the class accuracy of class-conditional samples (`DigitsClassifier.accuracy`).

Numbers computed this way are only comparable with numbers from the same network (same
`VERSION`, same training recipe); they are not comparable with any published FID or IS. The
scikit-learn SVM of `digits_judge` is an independent pixel-space accuracy check.

Architecture (input NHWC float32 [B, H, W, 1] in [-1, 1], as everywhere in cfg_jax):
conv 3x3 32 -> GELU -> (conv 3x3 64 stride 2 -> GELU) x num_downsamples (1 for digits, 2 for
mnist) -> flatten -> Dense 128 -> GELU (`features`) -> Dense 10 (`logits`).

Training (`train_digits_net`): Adam with a cosine-decayed learning rate, softmax cross-entropy,
batches drawn epoch by epoch from `np.random.RandomState(seed)` permutations of the train split,
each image shifted by a random -1/0/+1 pixel in each direction (from the same RandomState, the
border filled with the background value -1), initialisation from `jax.random.key(seed)`. The run
is deterministic: same inputs, seed and environment give bitwise identical params.

Cache (`load_or_train`): ``<resolve_data_dir(data)>/cfg_<name>_classifier/<version>/`` holds
``params.npz`` (flat float32 arrays, keys like ``Conv_0/kernel``, read with
``allow_pickle=False``) and ``info.json`` (version, training recipe, train/test accuracy and the
sha256 of ``params.npz``). Both are written atomically (temp file + ``os.replace``). On load the
sha256, the recipe and the array shapes are verified; a missing, corrupt or mismatching cache is
retrained (with a logged warning when a cache existed but was rejected) and rewritten, never used.
Loaded classifiers are also cached per process, keyed by the resolved data dir. The module is
over 450 lines because the network, its deterministic training recipe and the verified cache are
one unit: the cache is only valid for exactly this recipe and VERSION.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from cfg_jax import fileio
from cfg_jax.data import pipeline, specs

__all__ = [
  "DigitsClassifier",
  "DigitsNet",
  "FEATURE_DIM",
  "RECIPES",
  "Recipe",
  "NUM_CLASSES",
  "TRAIN_RECIPE",
  "VERSION",
  "cache_dir",
  "feature_net_name",
  "clear_memory_cache",
  "load_or_train",
  "train_digits_net",
]

PARAMS_FILE = "params.npz"
INFO_FILE = "info.json"
NUM_CLASSES = 10
FEATURE_DIM = 128
BACKGROUND = -1.0  # pixel value of an empty (0) digits pixel in [-1, 1]
_EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One dataset's judge: input shape, depth, training recipe and the cache's version.

  Bump `version` whenever the architecture, the recipe or the dataset changes: it names the
  cache directory, so old caches are simply ignored.
  """

  version: str
  image_shape: tuple[int, int, int]
  num_downsamples: int
  train: Mapping[str, Any]  # keyword arguments of `train_digits_net`


RECIPES = {
  "digits": Recipe(
    "1.0.0",
    (8, 8, 1),
    1,
    {"seed": 0, "steps": 600, "batch_size": 64, "learning_rate": 3e-3, "augment": True},
  ),
  "mnist": Recipe(
    "1.0.0",
    (28, 28, 1),
    2,
    {"seed": 0, "steps": 1500, "batch_size": 64, "learning_rate": 2e-3, "augment": True},
  ),
}
VERSION = RECIPES["digits"].version
IMAGE_SHAPE = RECIPES["digits"].image_shape
TRAIN_RECIPE = dict(RECIPES["digits"].train)


class DigitsNet(nn.Module):
  """Small CNN: [B, H, W, 1] in [-1, 1] -> {'features': [B, 128], 'logits': [B, 10]}."""

  num_downsamples: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    h = nn.gelu(nn.Conv(32, (3, 3))(x))
    for _ in range(self.num_downsamples):
      h = nn.gelu(nn.Conv(64, (3, 3), strides=2)(h))
    h = h.reshape(h.shape[0], -1)
    features = nn.gelu(nn.Dense(FEATURE_DIM)(h))
    return {"features": features, "logits": nn.Dense(NUM_CLASSES)(features)}


# ---------------------------------------------------------------------------------------------
# Training.


def _check_images(images: Any, shape: tuple[int, int, int] = IMAGE_SHAPE) -> np.ndarray:
  """float32 [N, *shape] numpy array, or ValueError."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != tuple(shape):
    raise ValueError(
      f"images must have shape [N, {', '.join(map(str, shape))}], got {images.shape}."
    )
  return images


def _check_labels(labels: Any, n: int) -> np.ndarray:
  """int32 [n] labels in [0, 10), or ValueError."""
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be {n} integers, got {labels.dtype} {labels.shape}.")
  if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f"labels must be in [0, {NUM_CLASSES}).")
  return labels.astype(np.int32)


def _batch_order(n: int, steps: int, batch_size: int, rng: np.random.RandomState) -> np.ndarray:
  """[steps, batch_size] example indices: consecutive epoch permutations, batches wrap."""
  epochs = -(-steps * batch_size // n)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
  return order[: steps * batch_size].reshape(steps, batch_size)


def _shift(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Shifts image i by offsets[i] = (dy, dx) in {0, 1, 2}^2 minus 1, filling with BACKGROUND."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=BACKGROUND)
  rows = offsets[:, 0, None] + np.arange(h)[None]
  cols = offsets[:, 1, None] + np.arange(w)[None]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


@functools.partial(jax.jit, static_argnames=("shape", "num_downsamples"))
def _init_params(key: jax.Array, *, shape=IMAGE_SHAPE, num_downsamples: int = 1) -> Any:
  """Initial `DigitsNet` params (jitted: much faster than op-by-op flax init on CPU)."""
  return DigitsNet(num_downsamples).init(key, jnp.zeros((1, *shape)))["params"]


def _loss(params: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
  logits = DigitsNet(_num_downsamples(params)).apply({"params": params}, images)["logits"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _num_downsamples(params: Mapping[str, Any]) -> int:
  """The depth of a `DigitsNet` from its params (one conv per level besides the first)."""
  return sum(k.startswith("Conv_") for k in params) - 1


def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
  """Adam with a cosine decay from `learning_rate` to 0 over `steps`."""
  return optax.adam(optax.cosine_decay_schedule(learning_rate, steps))


@functools.partial(jax.jit, static_argnames=("learning_rate", "steps"))
def _train_step(params, opt_state, images, labels, *, learning_rate, steps):
  """One Adam step on a batch (module-level so the compilation is reused across runs)."""
  grads = jax.grad(_loss)(params, images, labels)
  updates, opt_state = _optimizer(learning_rate, steps).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train_digits_net(
  images: np.ndarray,
  labels: np.ndarray,
  *,
  seed: int = TRAIN_RECIPE["seed"],
  steps: int = TRAIN_RECIPE["steps"],
  batch_size: int = TRAIN_RECIPE["batch_size"],
  learning_rate: float = TRAIN_RECIPE["learning_rate"],
  augment: bool = TRAIN_RECIPE["augment"],
  num_downsamples: int = 1,
) -> dict[str, Any]:
  """Trains `DigitsNet` on images [N, H, W, 1] in [-1, 1] and int labels [N]; returns params.

  Deterministic: batch order and shifts come from `np.random.RandomState(seed)`, the
  initialisation from `jax.random.key(seed)`. Returns nested float32 numpy params.
  """
  images = np.asarray(images, np.float32)
  images = _check_images(images, images.shape[1:] if images.ndim == 4 else IMAGE_SHAPE)
  labels = _check_labels(labels, len(images))
  if len(images) < batch_size or steps < 1:
    raise ValueError(
      f"need >= batch_size={batch_size} images and steps >= 1, got "
      f"{len(images)} images, steps={steps}."
    )
  rng = np.random.RandomState(seed)
  order = _batch_order(len(images), steps, batch_size, rng)
  offsets = (
    rng.randint(0, 3, size=(steps, batch_size, 2))
    if augment
    else np.ones((steps, batch_size, 2), np.int64)
  )
  params = _init_params(
    jax.random.key(seed), shape=images.shape[1:], num_downsamples=num_downsamples
  )
  opt_state = _optimizer(learning_rate, steps).init(params)
  for s in range(steps):
    x = _shift(images[order[s]], offsets[s])
    params, opt_state = _train_step(
      params, opt_state, x, labels[order[s]], learning_rate=learning_rate, steps=steps
    )
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


# ---------------------------------------------------------------------------------------------
# Inference.


@jax.jit
def _apply(params: Any, images: jax.Array) -> dict[str, jax.Array]:
  return DigitsNet(_num_downsamples(params)).apply({"params": params}, images)


def _padded_size(n: int, batch_size: int) -> int:
  """Batch size to pad a chunk of n rows to: batch_size, or a power of two >= n if smaller."""
  return batch_size if n >= batch_size else max(8, 1 << (n - 1).bit_length())


@dataclasses.dataclass(frozen=True, eq=False)
class DigitsClassifier:
  """A trained `DigitsNet` with batched, jitted numpy-in / numpy-out inference.

  Attributes:
    params: nested `DigitsNet` params.
    train_accuracy: accuracy on the dataset's train split when trained (None if unknown).
    test_accuracy: accuracy on its test split when trained (None if unknown).
    image_shape: (H, W, 1) of the images it classifies.
    batch_size: rows per jitted call; inputs are padded to it (one compilation per size).
  """

  params: Mapping[str, Any]
  train_accuracy: float | None = None
  test_accuracy: float | None = None
  batch_size: int = _EVAL_BATCH
  image_shape: tuple[int, int, int] = IMAGE_SHAPE

  def __post_init__(self):
    object.__setattr__(self, "_device_params", jax.device_put(self.params))

  def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """{'features': float32 [N, 128], 'logits': float32 [N, 10]} of images [N, H, W, 1]."""
    images = _check_images(images, self.image_shape)
    out = {
      "features": [np.zeros((0, FEATURE_DIM), np.float32)],
      "logits": [np.zeros((0, NUM_CLASSES), np.float32)],
    }
    for start in range(0, len(images), self.batch_size):
      chunk = images[start : start + self.batch_size]
      pad = _padded_size(len(chunk), self.batch_size) - len(chunk)
      chunk = np.concatenate([chunk, np.zeros((pad, *self.image_shape), np.float32)])
      result = _apply(self._device_params, chunk)
      for key in out:
        out[key].append(np.asarray(result[key])[: len(chunk) - pad])
    return {key: np.concatenate(parts) for key, parts in out.items()}

  def features(self, images: np.ndarray) -> np.ndarray:
    """Penultimate activations float32 [N, 128] (the Fréchet-distance features)."""
    return self.outputs(images)["features"]

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Class logits float32 [N, 10] (the Inception-style score input)."""
    return self.outputs(images)["logits"]

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Predicted classes int32 [N]."""
    return np.argmax(self.logits(images), axis=1).astype(np.int32)

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images classified as their label (class accuracy of guided samples)."""
    images = _check_images(images, self.image_shape)
    labels = _check_labels(labels, len(images))
    if not len(images):
      raise ValueError("accuracy of zero images is undefined.")
    return float(np.mean(self.predict(images) == labels))


# ---------------------------------------------------------------------------------------------
# On-disk cache.


def cache_dir(data_config: Any) -> str:
  """``<resolve_data_dir(data_config)>/cfg_<name>_classifier/<version>``."""
  name = _dataset_name(data_config)
  return os.path.join(
    specs.resolve_data_dir(data_config), f"cfg_{name}_classifier", RECIPES[name].version
  )


def _dataset_name(data_config: Any) -> str:
  """`data_config.name` if it has a judge in RECIPES, else ValueError."""
  name = data_config.name
  if name not in RECIPES:
    raise ValueError(
      f"no digits classifier for data.name={name!r}; it exists for {', '.join(RECIPES)}."
    )
  return name


def _save(directory: str, classifier: DigitsClassifier, recipe: Recipe) -> None:
  """Writes params.npz, then info.json (with the npz sha256), each atomically."""
  flat = traverse_util.flatten_dict(classifier.params, sep="/")
  params_path = os.path.join(directory, PARAMS_FILE)
  fileio.write_atomic(params_path, lambda f: np.savez(f, **flat))
  info = {
    "version": recipe.version,
    "recipe": dict(recipe.train),
    "sha256": fileio.sha256_file(params_path),
    "train_accuracy": classifier.train_accuracy,
    "test_accuracy": classifier.test_accuracy,
  }
  fileio.write_atomic(
    os.path.join(directory, INFO_FILE),
    lambda f: f.write(json.dumps(info, indent=2, sort_keys=True).encode()),
  )


def _load(directory: str, recipe: Recipe) -> DigitsClassifier:
  """Reads and verifies the cache in `directory`; raises ValueError/OSError if unusable."""
  with open(os.path.join(directory, INFO_FILE), "rb") as f:
    info = json.loads(f.read().decode())
  if not isinstance(info, dict):
    raise ValueError("info.json is not a JSON object")
  if info.get("version") != recipe.version or info.get("recipe") != dict(recipe.train):
    raise ValueError(
      f"version/recipe {info.get('version')}/{info.get('recipe')} != "
      f"{recipe.version}/{dict(recipe.train)}"
    )
  params_path = os.path.join(directory, PARAMS_FILE)
  if fileio.sha256_file(params_path) != info.get("sha256"):
    raise ValueError("sha256 of params.npz does not match info.json")
  with np.load(params_path, allow_pickle=False) as npz:
    flat = {k: np.asarray(npz[k]) for k in npz.files}
  expected = traverse_util.flatten_dict(
    jax.eval_shape(
      functools.partial(
        _init_params, shape=recipe.image_shape, num_downsamples=recipe.num_downsamples
      ),
      jax.random.key(0),
    ),
    sep="/",
  )
  got = {k: (v.shape, v.dtype) for k, v in flat.items()}
  if got != {k: (v.shape, np.dtype(v.dtype)) for k, v in expected.items()}:
    raise ValueError(f"params.npz arrays {got} do not match DigitsNet")
  if not all(np.all(np.isfinite(v)) for v in flat.values()):
    raise ValueError("params.npz contains NaN or inf")
  return DigitsClassifier(
    traverse_util.unflatten_dict(flat, sep="/"),
    train_accuracy=info.get("train_accuracy"),
    test_accuracy=info.get("test_accuracy"),
    image_shape=recipe.image_shape,
  )


def _train_on(name: str, data_dir: str) -> DigitsClassifier:
  """Trains with RECIPES[name] on that dataset in `data_dir`; measures train/test accuracy."""
  import ml_collections  # Local: only needed to address the dataset.

  recipe = RECIPES[name]
  data_config = ml_collections.ConfigDict({"name": name, "data_dir": data_dir})
  x_train, y_train = pipeline.eval_arrays(data_config, split="train")
  x_test, y_test = pipeline.eval_arrays(data_config, split="test")
  params = train_digits_net(
    x_train, y_train, num_downsamples=recipe.num_downsamples, **recipe.train
  )
  classifier = DigitsClassifier(params, image_shape=recipe.image_shape)
  return dataclasses.replace(
    classifier,
    train_accuracy=classifier.accuracy(x_train, y_train),
    test_accuracy=classifier.accuracy(x_test, y_test),
  )


@functools.lru_cache(maxsize=8)
def _load_or_train_cached(name: str, data_dir: str) -> DigitsClassifier:
  """`load_or_train` for a dataset name and resolved data dir (cached per process)."""
  if "://" in data_dir:
    logging.warning(
      "Digits classifier: remote data dir %s, training without a disk cache.", data_dir
    )
    return _train_on(name, data_dir)
  recipe = RECIPES[name]
  directory = os.path.join(data_dir, f"cfg_{name}_classifier", recipe.version)
  os.makedirs(directory, exist_ok=True)
  with fileio.file_lock(os.path.join(directory, ".lock")):
    present = [f for f in (PARAMS_FILE, INFO_FILE) if os.path.exists(os.path.join(directory, f))]
    if present:
      try:
        return _load(directory, recipe)
      except Exception as e:  # pylint: disable=broad-except  (BadZipFile, ValueError, OSError..)
        logging.warning(
          "Digits classifier cache in %s is unusable (%s: %s); retraining.",
          directory,
          type(e).__name__,
          e,
        )
    classifier = _train_on(name, data_dir)
    _save(directory, classifier, recipe)
    logging.info(
      "%s classifier trained (train %.4f, test %.4f), cached in %s.",
      name,
      classifier.train_accuracy,
      classifier.test_accuracy,
      directory,
    )
    return classifier


def load_or_train(data_config: Any) -> DigitsClassifier:
  """The classifier of `data_config`'s embedded dataset (digits or mnist): cached, else trained.

  See the module docstring for the cache layout and verification. Building the dataset
  (offline, via `cfg_jax.data`) happens only when training is needed.
  """
  name = _dataset_name(data_config)
  return _load_or_train_cached(name, specs.resolve_data_dir(data_config))


def feature_net_name(data_config: Any) -> str:
  """The name results rows record for this judge, e.g. 'digits_classifier_v1.0.0'."""
  name = _dataset_name(data_config)
  return f"{name}_classifier_v{RECIPES[name].version}"


def clear_memory_cache() -> None:
  """Forgets the classifiers `load_or_train` cached in this process (the disk cache stays)."""
  _load_or_train_cached.cache_clear()
