"""Shared test helpers: load the repository's config files, run the CLI in a subprocess."""

import os
import subprocess
import sys

from cfg_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The CLI's tiny digits run: what the session's `trained_digits` workdir is trained with.
TINY = [
  "--config.training.batch_size=16",
  "--config.training.log_every_steps=2",
  "--config.training.checkpoint_every_steps=2",
  "--config.training.grid_samples_per_class=2",
  "--config.sampling.num_steps=4",
  "--config.sampling.num_samples=12",
  "--config.evaluation.judge_num_samples=20",
]


def cli_env(devices: int) -> dict[str, str]:
  """The environment of a CLI subprocess: this one's, with `devices` fake CPU devices."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_cli(workdir, *args, tiny=tuple(TINY), check=True, config="digits"):
  """`python -m cfg_jax.main` on configs/`config`.py with the `tiny` settings (2 devices) and
  `args`."""
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "cfg_jax.main",
      f"--config=configs/{config}.py",
      f"--workdir={workdir}",
      *tiny,
      *args,
    ],
    cwd=REPO,
    env=cli_env(2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
  return proc


def load_config(name: str, arg: str | None = None):
  return config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"), arg)


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


def mixture_moment_error(toy, x, labels) -> float:
  """Σ over classes of L1 errors of the mean, covariance and nearest-component weights of the
  samples x [N, 2] with `labels` against the exact per-class moments of the 2D mixture `toy`."""
  import numpy as np

  from cfg_jax import toy2d

  err = 0.0
  for c in range(toy.num_classes):
    xc = x[labels == c]
    mean, cov = toy2d.class_moments(toy, label=c)
    comps = np.flatnonzero(toy.classes == c)
    nearest = toy2d.nearest_component(toy, x=xc)
    weights = np.array([np.mean(nearest == k) for k in comps])
    err += (
      np.abs(xc.mean(0) - mean).sum()
      + np.abs(np.cov(xc.T) - cov).sum()
      + np.abs(weights - toy.weights[comps]).sum()
    )
  return float(err)


def class_separation_and_spread(toy, x, labels) -> tuple[float, float]:
  """Mean over classes of (the mean distance of a class's samples to the nearest component of the
  other classes, the trace of the class's sample covariance)."""
  import numpy as np

  d, s = [], []
  for c in range(toy.num_classes):
    xc, others = x[labels == c], toy.means[toy.classes != c]
    d.append(np.min(np.linalg.norm(xc[:, None] - others[None], axis=-1), axis=1).mean())
    s.append(np.trace(np.cov(xc.T)))
  return float(np.mean(d)), float(np.mean(s))
