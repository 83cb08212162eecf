"""ImageNet 64×64 with a pixel-space DiT-XL/4 (674,890,032 parameters) in place of the ADM U-Net.

Patch 4 on 64×64×3 pixels gives 16×16 = 256 tokens, the sequence DiT-XL/2 sees on the 32×32×4
latents of 256×256 images, so the transformer runs at the paper's token count without a VAE. The
config argument picks p_uncond (0.1, 0.2 or 0.5; default 0.1). Needs tfds
`imagenet_resized/64x64` in data.data_dir. On a TPU pod slice (all workers):

    launch/tpu_pod.sh train --name NAME --zone ZONE --config configs/imagenet64_dit.py \
        --workdir gs://BUCKET/cfg_in64_dit --data-dir gs://BUCKET/tensorflow_datasets

(the same as `python -m cfg_jax.main --config=configs/imagenet64_dit.py
--workdir=gs://BUCKET/cfg_in64_dit --config.data.data_dir=gs://BUCKET/tensorflow_datasets` on
every worker). Add `-- --config.mesh.fsdp=N` to shard the 2.7 GB of params, EMA and both Adam
moments (11 GB in float32) over N devices.

What comes from where. The diffusion and sampler are the classifier-free guidance paper's, as in
configs/imagenet64.py: λ ∈ [−20, 20], v = 0.3, T = 256, p_uncond, EMA 0.9999, random flips,
400K steps (which is also the step count of the DiT paper's model comparisons). The optimizer is
the DiT paper's, where it differs from configs/imagenet64.py's (ADM's): batch 256 (not 2048),
a constant learning rate 1e-4 (not 3e-4) with no warmup (not 5,000 steps), AdamW without weight
decay (= Adam, as here), and no gradient clipping (the paper names none and its train.py has
none; configs/imagenet64.py clips at 1.0). The DiT has no dropout (ADM's 0.1 is a U-Net field).
Compute in bfloat16 (the parameters stay float32), as mixed precision on a TPU.
"""

import os
import runpy


def get_config(arg=None):
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "imagenet64.py"))["get_config"](arg)
  c.model.name = "dit"
  c.model.dit_preset = "XL/4"  # depth 28, hidden 1152, 16 heads, patch 4
  c.model.dit_mlp_ratio = 4.0
  c.model.dtype = "bfloat16"
  c.model.dropout = 0.0  # a U-Net field; the DiT has no dropout
  c.training.batch_size = 256
  c.training.learning_rate = 1e-4
  c.training.warmup_steps = 0
  c.training.grad_clip = 0.0
  return c.lock()
