"""The autoguidance guide for configs/mnist.py: the same data, half the width, a quarter of the
training (Karras et al. 2024 guide with a smaller, shorter-trained model of the same data).

    python -m cfg_jax.main --config=configs/mnist_guide.py --workdir=runs/mnist_guide
    python -m cfg_jax.main --config=configs/mnist.py --workdir=runs/mnist --mode=evaluate \
      --config.evaluation.guidance=auto --config.autoguidance.workdir=runs/mnist_guide \
      --config.autoguidance.config=configs/mnist_guide.py
"""

import os
import runpy


def get_config(arg=None):
  del arg
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "mnist.py"))["get_config"]()
  # 8 channels at 28×28 and 16 at 14×14 and 7×7 (mnist.py: 16 and 32), about a quarter of the
  # parameters.
  c.model.ch = 8
  c.model.head_channels = 8
  c.training.num_train_steps = 300  # mnist.py: 1200
  c.training.checkpoint_every_steps = 300
  c.evaluation.judge_num_samples = 0
  return c
