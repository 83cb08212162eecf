"""Converts pytorch-fid's Inception-v3 weights into the .npz that `inception.load_params` reads.

  python -m cfg_jax.evaluation.convert_inception \\
      --src pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

Source: `pt_inception-2015-12-05-6726825d.pth` from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/ , pytorch-fid's port of the
TF graph `inception-2015-12-05.tgz` that TTUR and guided-diffusion evaluate with.

Checksum: this module does not pin the file's full published sha256. It uses pytorch-fid's (torch
hub's) convention that the file name embeds the first 8 hex digits of the file's sha256, and checks
that the sha256 of `--src` starts with `6726825d` (`--skip-checksum` disables the check, e.g. for
a re-saved copy). Reading the .pth needs torch (not a cfg_jax dependency): it is loaded with
`torch.load(..., map_location="cpu", weights_only=True)`, which refuses to run pickled code.

Mapping (torchvision Inception3 state-dict names → Flax params, `inception.InceptionV3`):

  <layer>.conv.weight [O, I, kh, kw] + <layer>.bn.{weight, bias, running_mean, running_var}
      → <layer with '/' for '.'>/conv/{kernel [kh, kw, I, O], bias [O]}, BatchNorm (eps 1e-3)
        folded in: s = weight / sqrt(running_var + eps), kernel = W·s, bias = bias − mean·s
  fc.weight [1008, 2048], fc.bias [1008] → fc/kernel [2048, 1008], fc/bias [1008]

`*.num_batches_tracked` entries are ignored; anything else unexpected is an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from cfg_jax import fileio
from cfg_jax.evaluation import inception

PUBLISHED_SHA256_PREFIX = "6726825d"  # from the published file name, torch-hub convention
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
  """The source file is not pytorch-fid's Inception weights, or cannot be read."""


sha256_file = fileio.sha256_file


def verify_checksum(path: str, prefix: str = PUBLISHED_SHA256_PREFIX) -> str:
  """Returns the sha256 of `path`; raises ConversionError unless it starts with `prefix`."""
  digest = sha256_file(path)
  if not digest.startswith(prefix):
    raise ConversionError(
        f"sha256 of {path!r} is {digest}, which does not start with {prefix!r} (the prefix in the "
        f"published name {inception.PYTORCH_FID_WEIGHTS_NAME}): the file is not the published "
        f"weights or is corrupt. Download it again from {inception.PYTORCH_FID_WEIGHTS_URL} "
        "(or pass --skip-checksum for a deliberately re-saved copy).")
  return digest


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict with torch (weights_only, no code execution) as numpy arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(
        "reading the .pth needs PyTorch, which cfg_jax does not depend on; install it for the "
        "conversion only (`pip install torch`, the CPU build is enough), then re-run.") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # unpickling refused, corrupt file, ...
    raise ConversionError(f"torch could not read {path!r} as a state dict: {e}") from e
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def fold_batch_norm(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, *, eps: float = inception.BN_EPSILON
                    ) -> tuple[np.ndarray, np.ndarray]:
  """OIHW conv weight + inference BatchNorm → (HWIO kernel, bias), float32 (computed in float64)."""
  scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
  kernel = np.transpose(np.asarray(weight, np.float64), (2, 3, 1, 0)) * scale
  bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
  return kernel.astype(np.float32), bias.astype(np.float32)


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """pytorch-fid state dict (name → numpy array) → nested Flax params of `inception.InceptionV3`.

  The result is checked against the network's parameter shapes (ConversionError on mismatch).
  """
  state = {k: np.asarray(v) for k, v in state_dict.items()
           if not k.endswith(".num_batches_tracked")}
  flat, used = {}, set()
  for key in sorted(state):
    if not key.endswith(".conv.weight"):
      continue
    layer = key[:-len(".conv.weight")]
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
  unused = sorted(set(state) - used)
  if unused:
    raise ConversionError(
        f"{len(unused)} state-dict entries are not part of pytorch-fid's FID Inception "
        f"(torchvision weights with AuxLogits are a different network): {unused[:10]}"
        + (" ..." if len(unused) > 10 else ""))
  try:
    inception.check_params(flat, source="the converted state dict")
  except inception.InceptionWeightsError as e:
    raise ConversionError(str(e)) from None
  return traverse_util.unflatten_dict(flat, sep="/")


def convert(src: str, out: str, *, verify: bool = True) -> dict[str, Any]:
  """Checks, reads and converts the .pth at `src`, writes the .npz at `out`, returns the params."""
  if not os.path.isfile(src):
    raise ConversionError(
        f"no file at {src!r}; download {inception.PYTORCH_FID_WEIGHTS_URL} first.")
  if verify:
    verify_checksum(src)
  params = convert_state_dict(load_torch_state_dict(src))
  inception.save_params(params, out)
  return params


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cfg_jax.evaluation.convert_inception",
      description="Convert pytorch-fid's Inception-v3 FID weights (.pth) into cfg_jax's .npz.")
  parser.add_argument("--src", required=True, help=f"path of {inception.PYTORCH_FID_WEIGHTS_NAME}")
  parser.add_argument("--out", required=True, help="the .npz to write (for load_params)")
  parser.add_argument("--skip-checksum", action="store_true",
                      help=f"do not check that the sha256 starts with {PUBLISHED_SHA256_PREFIX}")
  args = parser.parse_args(argv)
  try:
    params = convert(args.src, args.out, verify=not args.skip_checksum)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(v.size for v in inception.flatten_params(params).values())
  print(f"wrote {args.out}: {n:,} parameters of Inception-v3 (2015-12-05, FID).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
