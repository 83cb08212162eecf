"""Configs load, validate, and bad values get errors that name the field."""

import ast
import os
import runpy
import sys

import pytest

from cfg_jax import config_lib, data, validation
from tests.helpers import REPO, load_config, tiny_config

CONFIGS = [
  "default",
  "digits",
  "digits_guide",
  "mnist",
  "mnist_guide",
  "cifar10",
  "imagenet64",
  "imagenet128",
  "digits_dit",
  "mnist_dit",
  "imagenet64_dit",
]


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_and_validate(name):
  c = load_config(name)
  validation.validate(c, num_devices=8)
  for section in ("data", "model", "diffusion", "guidance", "training", "sampling", "evaluation"):
    assert section in c


def test_imagenet_configs_follow_paper():
  c64 = load_config("imagenet64", "p_uncond=0.2")
  assert (c64.diffusion.logsnr_min, c64.diffusion.logsnr_max) == (-20.0, 20.0)
  assert c64.sampling.v == 0.3 and c64.training.num_train_steps == 400_000
  assert c64.guidance.p_uncond == 0.2
  assert load_config("imagenet64").guidance.p_uncond == 0.1
  c128 = load_config("imagenet128")
  assert c128.sampling.v == 0.2 and c128.training.num_train_steps == 2_700_000
  with pytest.raises(ValueError, match="unknown config argument"):
    load_config("imagenet64", "puncond=0.2")


def _differences(a, b) -> dict[str, tuple]:
  """{section.key: (a's value, b's)} of the fields where two configs differ."""
  fa, fb = config_lib.leaves(a), config_lib.leaves(b)
  return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_cpu_dit_configs_differ_from_the_unet_configs_in_the_network_alone(name):
  dit_config = load_config(f"{name}_dit")
  diff = _differences(dit_config, load_config(name))
  assert set(diff) <= {f"model.{f}" for f in ("name", "dit_hidden_size", "dit_depth")}
  assert dit_config.model.name == "dit" and dit_config.model.dit_preset == ""
  m = dit_config.model
  assert (m.dit_patch_size, m.dit_hidden_size, m.dit_depth, m.dit_num_heads) == (2, 64, 4, 4)
  tokens = (dit_config.data.image_size // m.dit_patch_size) ** 2
  assert tokens == {"digits": 16, "mnist": 196}[name]


def test_imagenet64_dit_is_dit_xl4_with_the_dit_papers_optimizer():
  """DiT-XL/4 on 64×64×3 (256 tokens), 674,890,032 parameters counted from shapes alone
  (jax.eval_shape), as facebookresearch/DiT's parameter shapes give; configs/imagenet64.py's
  diffusion and sampler, the DiT paper's optimizer (the differences are exactly these)."""
  import math

  from cfg_jax import models
  from tests.test_dit import reference_state_dict_shapes

  c = load_config("imagenet64_dit")
  model = models.create_model(c)
  assert isinstance(model, models.DiT) and c.model.dtype == "bfloat16"
  assert (model.patch_size, model.hidden_size, model.depth, model.num_heads) == (4, 1152, 28, 16)
  assert (64 // model.patch_size) ** 2 == 256
  n = models.count_params(model, models.image_shape(c))
  assert n == 674_890_032
  shapes = reference_state_dict_shapes(p=4, c=3, d=1152, depth=28, num_classes=1000)
  assert n == sum(math.prod(s) for s in shapes.values())
  assert _differences(c, load_config("imagenet64")) == {
    "model.name": ("dit", "unet"),
    "model.dit_preset": ("XL/4", ""),
    "model.dtype": ("bfloat16", "float32"),
    "model.dropout": (0.0, 0.1),
    "training.batch_size": (256, 2048),
    "training.learning_rate": (1e-4, 3e-4),
    "training.warmup_steps": (0, 5000),
    "training.grad_clip": (0.0, 1.0),
  }
  assert load_config("imagenet64_dit", "p_uncond=0.5").guidance.p_uncond == 0.5


def test_locked_config_rejects_unknown_keys():
  c = load_config("digits")
  with pytest.raises(AttributeError, match="does not exist"):
    c.training.bacth_size = 3


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("diffusion.logsnr_min", 20.0, "diffusion.logsnr_min"),
    ("guidance.p_uncond", 1.5, "guidance.p_uncond"),
    ("guidance.p_uncond", -0.1, "guidance.p_uncond"),
    ("model.ch_mult", (1, 2, 2, 2, 2), "cannot be halved 4 times for model.ch_mult"),
    ("data.image_size", 7, "data.image_size=7 but dataset 'digits' gives 8x8 images"),
    ("data.num_classes", 12, "data.num_classes=12 but dataset 'digits' has 10 classes"),
    ("data.name", "svhn", "Unknown dataset data.name='svhn'"),
    ("model.dtype", "int8", "model.dtype must be float32"),
    ("model.dtype", "bfloat", "model.dtype='bfloat'"),
    ("model.dropout", 1.0, "model.dropout must be in"),
    ("model.ch", 0, "model.ch=0"),
    ("diffusion.logsnr_max", float("inf"), "diffusion.logsnr_min and diffusion.logsnr_max"),
    ("evaluation.num_steps_values", (16, 1), "evaluation.num_steps_values holds 1"),
    ("evaluation.w_values", (-1.5,), "evaluation.w_values"),
    ("sampling.w_values", (float("inf"),), "sampling.w_values"),
    ("model.attn_resolutions", (3,), "model.attn_resolutions"),
    ("training.batch_size", 12, "not divisible by the 8 devices"),
    ("sampling.v", 2.0, "sampling.v"),
    ("sampling.num_steps", 1, "sampling.num_steps"),
    ("sampling.labels", (3, 10), "sampling.labels"),
    ("guidance.w_values", (0.0, float("nan")), "guidance.w_values"),
    ("model.head_channels", 5, "model.head_channels"),
  ],
)
def test_bad_values_name_the_field(key, value, match):
  c = tiny_config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=match):
    validation.validate(c, num_devices=8)


def test_errors_are_collected():
  c = tiny_config(**{"guidance.p_uncond": 2.0, "sampling.v": -1.0})
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(c)
  assert "guidance.p_uncond" in str(e.value) and "sampling.v" in str(e.value)


def test_errors_list_every_section():
  """One bad field of each kind: the dataset, the U-Net, the sampler, the mesh, plain fields."""
  c = tiny_config(
    **{
      "data.num_classes": 3,
      "model.head_channels": 5,
      "sampling.eta": 2.0,
      "mesh.fsdp": 3,
      "training.ema_decay": 1.0,
    }
  )
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(c, num_devices=8)
  for field in ("data.num_classes", "sampling.eta", "mesh.fsdp", "training.ema_decay"):
    assert field in str(e.value)
  c = tiny_config(**{"model.head_channels": 5, "sampling.eta": 2.0})
  with pytest.raises(config_lib.ConfigError, match="(?s)model.head_channels=5.*sampling.eta"):
    validation.validate(c, num_devices=8)


@pytest.mark.parametrize("name", CONFIGS)
def test_dataset_fields_come_from_the_dataset(name):
  """Configs leave data.image_size / num_classes unset; loading fills them from data.name."""
  raw = runpy.run_path(os.path.join(REPO, "configs", f"{name}.py"))["get_config"]()
  assert raw.data.image_size is None and raw.data.num_classes is None
  spec = data.dataset_spec(raw.data)
  c = load_config(name)
  assert (c.data.image_size, c.data.num_classes) == (spec.image_shape[0], spec.num_classes)
  validation.validate(raw, num_devices=8)  # validate fills them too
  assert (raw.data.image_size, raw.data.num_classes) == (spec.image_shape[0], spec.num_classes)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_import_only_ml_collections_and_the_standard_library(name):
  with open(os.path.join(REPO, "configs", f"{name}.py")) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      for module in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]:
        top = module.split(".")[0]
        assert top == "ml_collections" or top in sys.stdlib_module_names, (name, module)
