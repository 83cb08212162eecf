"""Reliability: exact resume through kills, corrupt / partial / NaN checkpoints, non-finite steps."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cfg_jax import checkpointing, train_loop, train_state
from tests.helpers import REPO, cli_env, tiny_config


def _tree(value=1.0):
  return {"a": jnp.full((4, 3), value), "b": {"c": jnp.arange(5.0) * value}}


def _corrupt(directory):
  """Overwrites the middle of every data file of a saved step."""
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      if "/d/" in path + "/" and os.path.getsize(path) > 16:
        with open(path, "r+b") as f:
          f.seek(os.path.getsize(path) // 2)
          f.write(b"\xff" * 8)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(1, _tree(1.0))
  ckpt.save(2, _tree(2.0))
  ckpt.wait()
  _corrupt(os.path.join(ckpt.directory, "2"))
  abstract = checkpointing.abstract_like(_tree())
  restored = ckpt.restore_latest_valid(abstract)
  np.testing.assert_array_equal(restored["a"], np.full((4, 3), 1.0))  # step 1, not garbage
  with pytest.raises(checkpointing.CheckpointError, match="step 2"):
    ckpt.restore(2, abstract)
  _corrupt(os.path.join(ckpt.directory, "1"))
  with pytest.raises(checkpointing.CheckpointError, match="could be restored"):
    ckpt.restore_latest_valid(abstract)
  ckpt.close()


def test_partial_checkpoint_is_ignored(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(3, _tree(3.0))
  ckpt.wait()
  # What a crash during the write of step 4 leaves behind: an uncommitted temporary directory.
  os.makedirs(os.path.join(ckpt.directory, "4.orbax-checkpoint-tmp-1234", "state"))
  ckpt2 = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt2.latest_step() == 3
  restored = ckpt2.restore_latest_valid(checkpointing.abstract_like(_tree()))
  np.testing.assert_array_equal(restored["b"]["c"], np.arange(5.0) * 3)
  ckpt.close()
  ckpt2.close()


def test_nan_state_is_never_checkpointed(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(1, _tree(1.0))
  ckpt.wait()
  with pytest.raises(checkpointing.CheckpointError, match="NaN or Inf"):
    ckpt.save(2, _tree(float("nan")))
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_metadata_io_error_is_not_mistaken_for_missing_metadata(tmp_path):
  """No metadata item or a file that is not JSON: None (not cfg_jax's). A file that cannot be
  read (here a directory where the JSON file should be): a CheckpointError naming the path."""
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  ckpt.save(1, _tree(1.0))
  ckpt.wait()
  path = os.path.join(ckpt.directory, "1", "metadata", "metadata")
  with open(path, "w") as f:
    f.write("not JSON")
  assert ckpt.metadata(1) is None
  with open(path, "wb") as f:
    f.write(b"\xff\xfe\x00binary")
  assert ckpt.metadata(1) is None
  with open(path, "w") as f:
    f.write("[1, 2]")
  assert ckpt.metadata(1) is None
  os.remove(path)
  os.mkdir(path)
  with pytest.raises(checkpointing.CheckpointError, match=f"{path}.*Is a directory"):
    ckpt.metadata(1)
  with pytest.raises(checkpointing.CheckpointError, match="Is a directory"):
    ckpt.restore(1, checkpointing.abstract_like(_tree()))
  ckpt.close()
  other = os.path.join(str(tmp_path), "other")
  manager = ocp.CheckpointManager(checkpointing.checkpoint_dir(other))  # no metadata item
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(1.0))))
  manager.close()
  ckpt = checkpointing.Checkpointer(other, read_only=True)
  assert ckpt.metadata(1) is None
  with pytest.raises(checkpointing.CheckpointError, match="not written by cfg_jax"):
    ckpt.restore(1, checkpointing.abstract_like(_tree()))
  ckpt.close()


def test_nonfinite_streak_stops_with_clear_error():
  config = tiny_config(**{"training.max_consecutive_nonfinite": 3})

  class _Ckpt:
    def latest_step(self):
      return 7

  loop = train_loop.LoopConfig(
    num_steps=20,
    batch_size=16,
    log_every=1,
    checkpoint_every=1,
    max_consecutive_nonfinite=config.training.max_consecutive_nonfinite,
  )
  state = train_state.TrainState(
    step=jnp.array(9), params={}, ema_params={}, opt_state={}, nonfinite_streak=jnp.array(2)
  )
  train_loop.check_nonfinite_streak(state, loop, _Ckpt())  # 2 < 3: carries on
  with pytest.raises(
    train_loop.NonFiniteLossError,
    match=r"max_consecutive_nonfinite=3\).*last good checkpoint \(step 7\)",
  ):
    train_loop.check_nonfinite_streak(state.replace(nonfinite_streak=jnp.array(3)), loop, _Ckpt())


@pytest.mark.slow
def test_fault_injection_harness_survives_kills(tmp_path):
  """SIGTERM and SIGKILL during steps and checkpoint writes; the end state is bitwise the same."""
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "cfg_jax.tools.fault_injection",
      "--faults",
      "2",
      "--steps",
      "8",
      "--workdir",
      str(tmp_path),
    ],
    cwd=REPO,
    env=cli_env(1),  # the harness's own runs set 1 device too
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "faults tried: 2, survived: 2" in proc.stdout
  assert "fault 1: SIGTERM, exit code 0" in proc.stdout  # preemption exits cleanly
