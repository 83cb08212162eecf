"""Parameter counts of every config's U-Net, from jax.eval_shape (nothing is allocated).

python -m benchmarks.param_counts        # prints the README's markdown table
"""

import os

from benchmarks.common import REPO

CONFIGS = ("digits", "mnist", "cifar10", "imagenet64", "imagenet128")
# guided-diffusion's create_model with its README flags, 3 output channels, without the ∅ row.
ADM_REFERENCE = {"imagenet64": 295_899_267, "imagenet128": 421_522_691}


def counts() -> dict[str, tuple[int, tuple[int, int, int]]]:
  from cfg_jax import config_lib, models

  out = {}
  for name in CONFIGS:
    config = config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    shape = models.image_shape(config)
    out[name] = (models.count_params(models.create_model(config), shape), shape)
  return out


def table() -> str:
  rows = [
    "| config | image | parameters | ADM reference (without the ∅ row) |",
    "|---|---|---:|---:|",
  ]
  for name, (n, shape) in counts().items():
    ref = f"{ADM_REFERENCE[name]:,}" if name in ADM_REFERENCE else "—"
    rows.append(f"| `configs/{name}.py` | {shape[0]}×{shape[1]}×{shape[2]} | {n:,} | {ref} |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(table())
