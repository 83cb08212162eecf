"""The embedded digits (8×8, 10 classes) with a DiT (adaLN-Zero) in place of configs/digits.py's
U-Net: the smallest DiT config, the one the DiT CLI tests run.

Patch 2: 8×8 cuts into 4×4 = 16 tokens of 2×2 pixels (patch 4 would leave 4 tokens, too few for
attention to mean much). Width 64, depth 4, 4 heads: 328,964 parameters
(the digits U-Net has 209,073). Training and sampling settings are configs/digits.py's:

    python -m cfg_jax.main --config=configs/digits_dit.py --workdir=runs/digits_dit
    python -m cfg_jax.main --config=configs/digits_dit.py --workdir=runs/digits_dit --mode=sample
"""

import os
import runpy


def get_config(arg=None):
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "digits.py"))["get_config"](arg)
  return small_dit(c).lock()


def small_dit(c):
  """`c` with its U-Net replaced by the small DiT of the CPU configs (also mnist_dit)."""
  c.model.name = "dit"
  c.model.dit_preset = ""
  c.model.dit_patch_size = 2
  c.model.dit_hidden_size = 64
  c.model.dit_depth = 4
  c.model.dit_num_heads = 4
  c.model.dit_mlp_ratio = 4.0
  return c
