"""The command line's face: expected errors as one message block with exit status 1, the typo
message, the config help of --mode=show_config, and the console's progress line."""

import io
import os
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib, errors, sharding, train_loop
from tests.helpers import REPO
from tests.test_train_loop import _scalars

DEFAULT = os.path.join(REPO, "configs", "default.py")
DIGITS = os.path.join(REPO, "configs", "digits.py")


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "cfg_jax.main", f"--config={DIGITS}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_guarded_prints_expected_errors_alone_and_keeps_bugs_tracebacks():
  def expected():
    raise config_lib.ConfigError("invalid config:\n  - sampling.v must be in [0, 1], got 2.0.")

  out = io.StringIO()
  assert errors.guarded(expected, stream=out) == 1
  assert out.getvalue() == (
    "ERROR ConfigError: invalid config:\n  - sampling.v must be in [0, 1], got 2.0.\n"
    + errors.HINT
    + "\n"
  )
  with pytest.raises(config_lib.ConfigError):  # --verbose: the traceback
    errors.guarded(expected, verbose=True)
  with pytest.raises(ZeroDivisionError):  # a bug is never hidden
    errors.guarded(lambda: 1 / 0, stream=out)
  assert errors.guarded(lambda: None) == 0


def test_unknown_field_names_the_section_and_the_closest_field():
  c = config_lib.read_config(DIGITS)
  assert config_lib.unknown_field(c, "training.batch_size") is None
  assert config_lib.unknown_field(c, "training.bacth_size") == (
    "training.bacth_size: no such field; did you mean training.batch_size?"
  )
  assert config_lib.unknown_field(c, "trainig.batch_size") == (
    "trainig.batch_size: no such field; did you mean training.batch_size?"
  )
  assert (
    config_lib.unknown_field(c, "seed.x")
    == "seed.x: no such field; seed is a value, not a section."
  )
  assert config_lib.unknown_field(c, "mesh.zzz") == (
    "mesh.zzz: no such field; the fields of mesh are fsdp, fsdp_min_size."
  )


def test_typo_on_the_command_line_and_verbose():
  proc = _cli("--workdir=unused", "--config.training.bacth_size=3")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr == (
    "ERROR ConfigError: training.bacth_size: no such field; did you mean training.batch_size?\n"
    + errors.HINT
    + "\n"
  )
  proc = _cli("--workdir=unused", "--config.training.bacth_size=3", "--verbose")
  assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_every_default_field_has_a_help_line():
  helps = config_lib.field_help(DEFAULT)
  fields = config_lib.leaves(config_lib.read_config(DEFAULT))
  assert [f for f in fields if not helps.get(f)] == []
  assert all("\n" not in h for h in helps.values())
  assert helps["training.batch_size"] == "global, over all devices and processes"  # trailing
  assert helps["evaluation.save_features"].startswith("Also write each (T, w) cell's")  # above


def test_show_config_prints_every_field_value_and_help():
  proc = _cli("--mode=show_config", "--config.sampling.v=0.2")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == len(config_lib.leaves(config_lib.read_config(DIGITS)))
  assert "sampling.v = 0.2  # paper: 0.3 at 64x64, 0.2 at 128x128 (default: 0.3)" in lines
  assert "training.num_train_steps = 1500  # train until this step (default: 1000)" in lines
  assert "seed = 0  # base of every random key: init, data order, dropout, sampling noise" in lines


def test_changed_fields_are_the_diff_from_the_defaults():
  c = config_lib.read_config(DIGITS)
  with c.unlocked():
    c.sampling.v = 0.2
  assert config_lib.changed_fields(c, config_lib.read_config(DEFAULT)) == {
    "sampling.v": 0.2,
    "training.ema_decay": 0.995,
    "training.num_train_steps": 1500,
  }


def test_format_duration():
  assert train_loop.format_duration(0.4) == "0s"
  assert train_loop.format_duration(59.6) == "1m00s"
  assert train_loop.format_duration(245) == "4m05s"
  assert train_loop.format_duration(3723) == "1h02m03s"


def test_progress_line_eta_from_the_measured_rate():
  line = train_loop.progress_line(
    step=100,
    num_steps=1500,
    summary={"loss": 0.25, "steps_per_sec": 20.0, "images_per_sec": 1280.0},
  )
  assert line == "step 100/1500: loss=0.25; 20 steps/s, 1,280 images/s, ETA 1m10s"
  assert train_loop.progress_line(step=1, num_steps=5, summary={"loss": 1.0}) == "step 1/5: loss=1"


@flax.struct.dataclass
class _Counter:
  step: jax.Array


def test_images_per_sec_excludes_the_compiling_first_step(tmp_path):
  calls = []

  def step_fn(state, batch, rng):
    del batch, rng
    if not calls:
      time.sleep(1.0)  # what the first step's compile costs, here known
    calls.append(1)
    return _Counter(step=state.step + 1), {"loss": jnp.float32(0.0)}

  train_loop.run(
    _Counter(step=jnp.zeros((), jnp.int32)),
    step_fn,
    workdir=str(tmp_path),
    loop=train_loop.LoopConfig(num_steps=4, batch_size=8, log_every=4, checkpoint_every=0),
    batches=lambda *, start_step: iter(lambda: {"x": np.zeros(2, np.float32)}, None),
    mesh=sharding.make_mesh(1),
    rng=jax.random.key(0),
    hparams={},
    metadata={},
  )
  ((step, rate),) = _scalars(tmp_path, "train/images_per_sec")
  # Steps 2-4 take milliseconds; counting the 1 s first step would give < 32 images/s.
  assert step == 4 and rate > 200
