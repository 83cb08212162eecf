"""Shared test helpers: load the repository's config files."""
import os

from cfg_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  module = config_lib.load_sibling(os.path.join(REPO, "configs", "x.py"), name)
  return module.get_config(arg)


def tiny_config(**overrides):
  """The digits config shrunk for tests: few steps, tiny sample grids."""
  c = load_config("digits")
  with c.unlocked():
    c.training.num_train_steps = 4
    c.training.batch_size = 16
    c.training.log_every_steps = 2
    c.training.checkpoint_every_steps = 2
    c.training.grid_samples_per_class = 2
    c.sampling.num_steps = 4
    c.sampling.num_samples = 12
    c.sampling.batch_size = 16
    c.evaluation.judge_num_samples = 0
    for key, value in overrides.items():
      section, _, field = key.partition(".")
      c[section][field] = value
  return c
