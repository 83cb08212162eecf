"""ImageNet 128×128, the paper's Table 2 setting: ADM's 128×128 conditional U-Net (422M params).

Needs tfds `imagenet2012` (manual download) prepared in data.data_dir; images are resized and
center-cropped to 128×128. The config argument picks p_uncond (default 0.1). On a TPU pod slice:

    python -m cfg_jax.main --config=configs/imagenet128.py --workdir=gs://BUCKET/cfg_in128 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: λ ∈ [−20, 20], v = 0.2, 2.7M training steps, T = 128/256/1024. Batch size and learning rate
follow ADM for ImageNet 128: batch 256, lr 1e-4, no dropout, 4 attention heads.
"""

import os
import runpy


def get_config(arg=None):
  default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))
  args = default["parse_arg"](arg, p_uncond=0.1)
  c = default["get_config"]()
  c.data.name = "imagenet128"
  c.data.random_flip = True
  c.model.ch = 256
  c.model.ch_mult = (1, 1, 2, 3, 4)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (32, 16, 8)
  c.model.head_channels = -1
  c.model.num_heads = 4
  c.model.dropout = 0.0
  c.model.resblock_updown = True
  c.diffusion.logsnr_min = -20.0
  c.diffusion.logsnr_max = 20.0
  c.guidance.p_uncond = args.p_uncond
  c.training.batch_size = 256
  c.training.num_train_steps = 2_700_000
  c.training.learning_rate = 1e-4
  c.training.warmup_steps = 5000
  c.training.ema_decay = 0.9999
  c.training.log_every_steps = 1000
  c.training.checkpoint_every_steps = 10_000
  c.training.sample_every_steps = 50_000
  c.training.grid_samples_per_class = 1
  c.sampling.num_steps = 256
  c.sampling.v = 0.2
  c.sampling.batch_size = 512
  c.evaluation.judge_num_samples = 0
  return c.lock()
