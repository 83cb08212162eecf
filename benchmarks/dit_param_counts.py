"""Trainable parameter counts of cfg_jax's DiT beside facebookresearch/DiT's, preset by preset.

    python -m benchmarks.dit_param_counts                          # beside the recorded counts
    python -m benchmarks.dit_param_counts --reference_dir PATH     # beside a fresh count

The reference is DiT's ``models.py`` with ``learn_sigma=False`` (the output is eps alone, as
here) and ``class_dropout_prob=0.1`` (its label table then has the null row num_classes, as
here); its fixed ``pos_embed`` has ``requires_grad=False`` and is not counted (cfg_jax computes
it, no parameter). cfg_jax's counts come from jax.eval_shape (nothing is allocated). With
``--reference_dir`` (a checkout of the DiT repository, or a directory holding its models.py;
torch and timm importable) the script imports it, counts its trainable parameters on the meta
device, and also checks one forward: a small DiT with the reference's random weights, mapped by
``dit.params_from_reference``, against the reference run in float64, beside the reference's own
float32 error. It writes benchmarks/results/dit_param_counts.md (the command without --out).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys

from benchmarks.common import REPO

PRESETS = ("S/2", "S/4", "B/2", "B/4", "L/2", "XL/2")
# (H, W, C, num_classes): DiT's 256x256 ImageNet latents, MNIST, ImageNet 64x64 pixels.
SHAPES = ((32, 32, 4, 1000), (28, 28, 1, 10), (64, 64, 3, 1000))
# facebookresearch/DiT models.py (timm 1.0.31, torch 2.13): trainable parameters with
# learn_sigma=False, class_dropout_prob=0.1, by (preset, (H, W, C, num_classes)).
RECORDED = {
  ("S/2", (32, 32, 4, 1000)): 32_858_896,
  ("S/2", (28, 28, 1, 10)): 32_469_508,
  ("S/2", (64, 64, 3, 1000)): 32_855_820,
  ("S/4", (32, 32, 4, 1000)): 32_895_808,
  ("S/4", (28, 28, 1, 10)): 32_478_736,
  ("S/4", (64, 64, 3, 1000)): 32_883_504,
  ("B/2", (32, 32, 4, 1000)): 130_303_504,
  ("B/2", (28, 28, 1, 10)): 129_524_740,
  ("B/2", (64, 64, 3, 1000)): 130_297_356,
  ("B/4", (32, 32, 4, 1000)): 130_377_280,
  ("B/4", (28, 28, 1, 10)): 129_543_184,
  ("B/4", (64, 64, 3, 1000)): 130_352_688,
  ("L/2", (32, 32, 4, 1000)): 457_824_272,
  ("L/2", (28, 28, 1, 10)): 456_785_924,
  ("L/2", (64, 64, 3, 1000)): 457_816_076,
  ("XL/2", (32, 32, 4, 1000)): 674_816_272,
  ("XL/2", (28, 28, 1, 10)): 673_648_132,
  ("XL/2", (64, 64, 3, 1000)): 674_807_052,
}


def cfg_jax_count(preset: str, shape: tuple[int, int, int, int]) -> int:
  from cfg_jax.models import DiT, count_params, dit

  height, width, channels, num_classes = shape
  model = DiT(num_classes=num_classes, **dit.preset_sizes(preset))
  return count_params(model, (height, width, channels))


def reference_module(reference_dir: str):
  """DiT's models.py, loaded from its file in `reference_dir` (torch and timm must import)."""
  import importlib.util

  path = os.path.join(os.path.abspath(reference_dir), "models.py")
  spec = importlib.util.spec_from_file_location("dit_reference_models", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def reference_count(models, preset: str, shape: tuple[int, int, int, int]) -> int:
  import torch

  height, width, channels, num_classes = shape
  assert height == width, "the reference takes square inputs only"
  with torch.device("meta"):
    model = models.DiT_models[f"DiT-{preset}"](
      input_size=height,
      in_channels=channels,
      num_classes=num_classes,
      learn_sigma=False,
      class_dropout_prob=0.1,
    )
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_forward_error(models) -> tuple[float, float, float]:
  """(max |eps_cfg_jax - eps_exact|, max |eps_reference - eps_exact|, max |eps_exact|), both
  models in float32 and eps_exact the reference in float64, for a small DiT (8x8x4 input, patch 2, hidden 64, depth 2, 4 heads, 5 classes)
  with N(0, 0.2) weights, the reference at t = 1000 u(λ)."""
  import jax.numpy as jnp
  import numpy as np
  import torch

  from cfg_jax.models import DiT, dit, unet

  torch.manual_seed(0)
  sizes = dict(patch_size=2, hidden_size=64, depth=2, num_heads=4)
  ref = models.DiT(
    input_size=8, in_channels=4, num_classes=5, learn_sigma=False, class_dropout_prob=0.1, **sizes
  ).eval()
  with torch.no_grad():
    for p in ref.parameters():
      if p.requires_grad:
        p.normal_(0.0, 0.2)
  params = dit.params_from_reference({k: v.numpy() for k, v in ref.state_dict().items()})
  rng = np.random.default_rng(0)
  z = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
  logsnr = np.array([-15.0, -2.0, 3.0, 12.0], np.float32)
  labels = np.array([0, 2, 5, 4], np.int32)  # 5 = the null label
  out = DiT(num_classes=5, **sizes).apply({"params": params}, z, logsnr, labels, train=False)
  t = np.array(1000.0 * unet.logsnr_to_unit_time(jnp.asarray(logsnr), -20.0, 20.0))

  def run(dtype):
    with torch.no_grad():
      args = (torch.from_numpy(z.transpose(0, 3, 1, 2)), torch.from_numpy(t))
      y = ref.to(dtype)(*(a.to(dtype) for a in args), torch.from_numpy(labels).long())
    return y.numpy().transpose(0, 2, 3, 1).astype(np.float64)

  expected = run(torch.float32)
  # The float64 run: the reference's sinusoid is float32 whatever the model's dtype; swap in the
  # same formula (cos half, then sin) in float64.
  half = dit.FREQUENCY_EMBEDDING_SIZE // 2
  freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
  ref.t_embedder.timestep_embedding = lambda t, dim: torch.cat(
    [torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1
  )
  exact = run(torch.float64)
  return (
    float(np.abs(np.asarray(out) - exact).max()),
    float(np.abs(expected - exact).max()),
    float(np.abs(exact).max()),
  )


def versions(reference_dir: str) -> str:
  """'DiT <commit>, torch <v>, timm <v>' of the reference run."""
  import subprocess

  import timm
  import torch

  proc = subprocess.run(
    ["git", "-C", reference_dir, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
  )
  commit = proc.stdout.strip() if proc.returncode == 0 else "(not a git checkout)"
  return f"DiT {commit}, torch {torch.__version__}, timm {timm.__version__}"


def table(counts: dict, reference: dict, source: str) -> str:
  rows = [
    f"| preset | input H×W×C | classes | cfg_jax | reference ({source}) | equal |",
    "|---|---|---:|---:|---:|---|",
  ]
  for (preset, shape), n in counts.items():
    ref = reference.get((preset, shape))
    equal = "—" if ref is None else ("yes" if ref == n else f"**no** ({n - ref:+,})")
    ref_text = "—" if ref is None else f"{ref:,}"
    h, w, c, k = shape
    rows.append(f"| DiT-{preset} | {h}×{w}×{c} | {k:,} | {n:,} | {ref_text} | {equal} |")
  return "\n".join(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--reference_dir", default="", help="DiT checkout (or dir with models.py)")
  parser.add_argument(
    "--out", default=os.path.join(REPO, "benchmarks", "results", "dit_param_counts.md")
  )
  args = parser.parse_args()
  counts = {(p, s): cfg_jax_count(p, s) for p in PRESETS for s in SHAPES}
  forward, shown = "", []
  if args.reference_dir:
    models = reference_module(args.reference_dir)
    reference = {key: reference_count(models, *key) for key in counts}
    source = "counted now"
    err, noise, scale = reference_forward_error(models)
    forward = (
      f"\n\nReference: {versions(args.reference_dir)}. One forward with the reference's weights "
      "(`dit.params_from_reference`), a DiT of hidden 64, depth 2, patch 2 on 8×8×4 with "
      f"N(0, 0.2) weights, four (λ, label) pairs, against the reference run in float64 (max |ε| "
      f"= {scale:.1f}): max error {err:.1e} for cfg_jax in float32, {noise:.1e} for the "
      "reference in float32."
    )
    shown = ["--reference_dir", "<DiT checkout>"]
  else:
    reference, source = RECORDED, "recorded"
  command = shlex.join(["python", "benchmarks/dit_param_counts.py", *shown])
  text = (
    "# DiT trainable parameters: cfg_jax beside facebookresearch/DiT\n\n"
    f"`{command}`. The reference is DiT's `models.py` with `learn_sigma=False`, "
    "`class_dropout_prob=0.1` (the label table has num_classes + 1 rows, as cfg_jax's always "
    "has); the fixed `pos_embed` is not trainable there and not a parameter here. cfg_jax "
    "counts with `jax.eval_shape` (nothing allocated). The DiT paper's sizes for S/2, B/2, L/2, "
    "XL/2 (33M, 130M, 458M, 675M) are those of the 32×32×4 rows.\n\n"
    + table(counts, reference, source)
    + forward
    + "\n"
  )
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  mismatched = [k for k, n in counts.items() if k in reference and reference[k] != n]
  if mismatched:
    sys.exit(f"counts differ from the reference for {mismatched}")


if __name__ == "__main__":
  main()
