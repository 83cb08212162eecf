"""The embedded default: UCI handwritten digits (8×8, 10 classes) that scikit-learn ships.

Trains on a CPU (the README has the timing) and writes sample grids for w = 0, 1, 3:

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=sample
"""

import os
import runpy


def get_config(arg=None):
  del arg
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))["get_config"]()
  c.data.name = "digits"
  # 0.19M-parameter U-Net: 16 channels, two levels (8×8, 4×4), attention at 4×4.
  c.model.ch = 16
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.head_channels = 16
  c.training.batch_size = 64
  c.training.num_train_steps = 1500
  c.training.learning_rate = 1e-3
  c.training.warmup_steps = 100
  c.training.ema_decay = 0.995
  c.training.checkpoint_every_steps = 500
  c.sampling.num_steps = 64
  c.sampling.v = 0.3
  return c.lock()
