"""The autoguidance guide for configs/digits.py: the same data, half the width, a quarter of the
training (Karras et al. 2024 guide with a smaller, shorter-trained model of the same data).

    python -m cfg_jax.main --config=configs/digits_guide.py --workdir=runs/digits_guide
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=evaluate \
      --config.evaluation.guidance=auto --config.autoguidance.workdir=runs/digits_guide \
      --config.autoguidance.config=configs/digits_guide.py
"""

import os
import runpy


def get_config(arg=None):
  del arg
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "digits.py"))["get_config"]()
  # 8 channels at 8×8 and 16 at 4×4 (digits.py: 16 and 32), about a quarter of the parameters.
  c.model.ch = 8
  c.model.head_channels = 8
  c.training.num_train_steps = 375  # digits.py: 1500
  c.training.checkpoint_every_steps = 375
  c.evaluation.judge_num_samples = 0
  return c
