"""A corrupt latest checkpoint, made for real by truncating the data files orbax wrote: sampling,
evaluation and the classifier loader fall back to the newest intact step, as training does, say
which step they use and which config field picks another, and load exactly that step's arrays."""

import functools
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from cfg_jax import checkpointing, models, sharding, train_state
from cfg_jax.jobs import evaluate as evaluate_job
from cfg_jax.jobs import sample as sample_job
from tests.helpers import tiny_config


def _truncate_step(directory: str, step: int) -> None:
  """Cuts every array data file of checkpoint `step` to half its size."""
  for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
    for name in files:
      path = os.path.join(root, name)
      if f"{os.sep}d{os.sep}" in path and os.path.getsize(path) > 16:
        os.truncate(path, os.path.getsize(path) // 2)


def _config(**overrides):
  return tiny_config(
    **{
      "sampling.w_values": (1.0,),
      "sampling.num_samples": 8,
      "evaluation.num_samples": 10,
      "evaluation.w_values": (1.0,),
      **overrides,
    }
  )


def _save_two_steps(directory: str, state) -> None:
  """Checkpoints 1 (`state`) and 2 (its params shifted by 1) in `directory`; then truncates 2."""
  ckpt = checkpointing.Checkpointer(directory)
  ckpt.save(1, state)
  shifted = jax.tree.map(lambda x: x + 1.0, state.params)
  ema = {"ema_params": shifted} if hasattr(state, "ema_params") else {}  # the classifier has none
  ckpt.save(2, state.replace(step=state.step + 1, params=shifted, **ema))
  ckpt.close()
  _truncate_step(checkpointing.checkpoint_dir(directory), 2)


@pytest.fixture(scope="module")
def corrupt_run(tmp_path_factory):
  """(workdir, the state of its checkpoint 1): a fresh train state saved at steps 1 and 2, whose
  step 2 is then truncated."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config()
  init = functools.partial(
    train_state.init_state,
    model=models.create_model(config),
    tx=train_state.create_optimizer(config),
    shape=models.image_shape(config),
  )
  state = jax.jit(init)(jax.random.key(0))
  _save_two_steps(workdir, state)
  return workdir, state


def _warnings(caplog):
  return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.slow
def test_sample_falls_back_to_the_newest_intact_step(corrupt_run, caplog):
  workdir, state = corrupt_run
  config, mesh = _config(), sharding.make_mesh(1)
  with caplog.at_level(logging.WARNING):
    npz = sample_job.run(config, workdir)
  assert os.path.basename(os.path.dirname(npz)) == "step_00000001"
  warned = _warnings(caplog)
  assert "checkpoint step 2" in warned and "Using checkpoint step 1" in warned
  assert "--config.sampling.checkpoint_step" in warned
  params, step = train_state.restore_params(config, workdir, mesh)
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, params, state.ema_params)  # step 1's, not 2's
  with pytest.raises(checkpointing.CheckpointError, match="step 2"):  # asked for: no fallback
    train_state.restore_params(config, workdir, mesh, step=2)


@pytest.mark.slow
def test_evaluate_falls_back_to_the_newest_intact_step(corrupt_run, caplog, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(corrupt_run[0], workdir)
  with caplog.at_level(logging.WARNING):
    rows = evaluate_job.run(_config(), workdir)
  assert [r["step"] for r in rows] == [1]
  warned = _warnings(caplog)
  assert "Using checkpoint step 1" in warned and "--config.evaluation.checkpoint_step" in warned


@pytest.mark.slow
def test_classifier_loader_falls_back_to_the_newest_intact_step(tmp_path, caplog):
  config = _config()
  config.classifier.update(
    dict(ch=8, ch_mult=(1,), attn_resolutions=(), head_channels=8, num_groups=4)
  )
  init = functools.partial(
    train_state.init_classifier_state,
    model=models.create_classifier(config),
    tx=train_state.create_classifier_optimizer(config),
    shape=(8, 8, 1),
  )
  state = jax.jit(init)(jax.random.key(0))
  workdir = str(tmp_path)
  _save_two_steps(os.path.join(workdir, train_state.CLASSIFIER_SUBDIR), state)
  mesh = sharding.make_mesh(1)
  with caplog.at_level(logging.WARNING):
    params, _ = train_state.restore_classifier_params(config, workdir, mesh)
  assert "Using checkpoint step 1" in _warnings(caplog)
  jax.tree.map(np.testing.assert_array_equal, params, state.params)  # step 1's, not step 2's
