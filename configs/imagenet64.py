"""ImageNet 64×64, the paper's Table 1 setting: ADM's 64×64 conditional U-Net (296M parameters).

The config argument picks p_uncond (0.1, 0.2 or 0.5 in the paper; default 0.1). Needs tfds
`imagenet_resized/64x64` prepared in data.data_dir. On a TPU pod slice (all workers):

    python -m cfg_jax.main --config=configs/imagenet64.py:p_uncond=0.2 \
        --workdir=gs://BUCKET/cfg_in64_p02 --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: λ ∈ [−20, 20], v = 0.3, 400K training steps, T = 256. Batch size, learning rate, dropout and
EMA follow ADM (Dhariwal & Nichol 2021) for ImageNet 64: batch 2048, lr 3e-4, dropout 0.1.
"""

import os
import runpy


def get_config(arg=None):
  default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))
  args = default["parse_arg"](arg, p_uncond=0.1)
  c = default["get_config"]()
  c.data.name = "imagenet64"
  c.data.random_flip = True
  c.model.ch = 192
  c.model.ch_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 3
  c.model.attn_resolutions = (32, 16, 8)
  c.model.head_channels = 64
  c.model.num_heads = -1
  c.model.dropout = 0.1
  c.model.resblock_updown = True
  c.diffusion.logsnr_min = -20.0
  c.diffusion.logsnr_max = 20.0
  c.guidance.p_uncond = args.p_uncond
  c.training.batch_size = 2048
  c.training.num_train_steps = 400_000
  c.training.learning_rate = 3e-4
  c.training.warmup_steps = 5000
  c.training.grad_clip = 1.0
  c.training.ema_decay = 0.9999
  c.training.log_every_steps = 1000
  c.training.checkpoint_every_steps = 10_000
  c.training.sample_every_steps = 20_000
  c.training.grid_samples_per_class = 1
  c.sampling.num_steps = 256
  c.sampling.v = 0.3
  c.sampling.batch_size = 2048
  c.evaluation.judge_num_samples = 0
  return c.lock()
