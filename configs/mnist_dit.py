"""MNIST (28×28, 10 classes) with a DiT (adaLN-Zero) in place of configs/mnist.py's U-Net.

Patch 2: 28×28 cuts into 14×14 = 196 tokens of 2×2 pixels, the sequence length DiT-XL/2 sees
(256 tokens of 32×32×4 latents) rather than patch 4's 49 tokens of 16 pixels; the DiT paper finds
the smaller patch (more tokens, more FLOPs at the same parameter count) the better model at every
size, and on this CPU 196 tokens of width 64 still train at tens of images/s. Width 64, depth 4,
4 heads (head width 16): 328,964 parameters beside the 345,713 of configs/mnist.py's U-Net.
The training and sampling settings are configs/mnist.py's (same optimizer, steps and T), so the
two configs differ in the network alone (benchmarks/dit_vs_unet.py compares them):

    python -m cfg_jax.main --config=configs/mnist_dit.py --workdir=runs/mnist_dit
    python -m cfg_jax.main --config=configs/mnist_dit.py --workdir=runs/mnist_dit --mode=evaluate
"""

import os
import runpy


def get_config(arg=None):
  here = os.path.dirname(__file__)
  c = runpy.run_path(os.path.join(here, "mnist.py"))["get_config"](arg)
  return runpy.run_path(os.path.join(here, "digits_dit.py"))["small_dit"](c).lock()
