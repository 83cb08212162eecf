"""Configs load, validate, and bad values get errors that name the field."""
import pytest

from cfg_jax import config_lib
from tests.helpers import load_config, tiny_config


@pytest.mark.parametrize("name", ["default", "digits", "mnist", "cifar10", "imagenet64", "imagenet128"])
def test_configs_load_and_validate(name):
  c = load_config(name)
  config_lib.validate(c, num_devices=8)
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
  with pytest.raises(config_lib.ConfigError, match="unknown config argument"):
    load_config("imagenet64", "puncond=0.2")


def test_locked_config_rejects_unknown_keys():
  c = load_config("digits")
  with pytest.raises(AttributeError, match="does not exist"):
    c.training.bacth_size = 3


@pytest.mark.parametrize("key,value,match", [
    ("diffusion.logsnr_min", 20.0, "diffusion.logsnr_min"),
    ("guidance.p_uncond", 1.5, "guidance.p_uncond"),
    ("guidance.p_uncond", -0.1, "guidance.p_uncond"),
    ("data.image_size", 7, "cannot be halved"),
    ("model.attn_resolutions", (3,), "model.attn_resolutions"),
    ("training.batch_size", 12, "not divisible by the 8 devices"),
    ("sampling.v", 2.0, "sampling.v"),
    ("sampling.num_steps", 1, "sampling.num_steps"),
    ("sampling.labels", (3, 10), "sampling.labels"),
    ("guidance.w_values", (0.0, float("nan")), "guidance.w_values"),
    ("model.head_channels", 5, "model.head_channels"),
])
def test_bad_values_name_the_field(key, value, match):
  c = tiny_config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, num_devices=8)


def test_errors_are_collected():
  c = tiny_config(**{"guidance.p_uncond": 2.0, "sampling.v": -1.0})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert "guidance.p_uncond" in str(e.value) and "sampling.v" in str(e.value)
