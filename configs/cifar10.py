"""CIFAR-10 (32×32, 10 classes): a CIFAR-sized ADM U-Net (42.9M parameters).

Needs the tfds `cifar10` dataset prepared in data.data_dir (`tfds build cifar10` on a machine
with network). On one accelerator host:

    python -m cfg_jax.main --config=configs/cifar10.py --workdir=gs://BUCKET/cfg_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
"""

import os
import runpy


def get_config(arg=None):
  del arg
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))["get_config"]()
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.head_channels = 64
  c.model.dropout = 0.1
  c.training.batch_size = 128
  c.training.num_train_steps = 400_000
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 5000
  c.training.ema_decay = 0.9999
  c.training.log_every_steps = 500
  c.training.checkpoint_every_steps = 10_000
  c.training.sample_every_steps = 10_000
  c.sampling.num_steps = 256
  c.sampling.v = 0.3
  c.sampling.batch_size = 1000
  c.evaluation.judge_num_samples = 0
  return c.lock()
