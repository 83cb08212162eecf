"""Test set-up: 8 fake CPU devices (tests that need 1 use a 1-device mesh), quiet TF, no
Inception weights from the developer's default location (tests that want some pass a path), and
one tiny trained digits workdir for the CLI tests that read one."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI subprocesses of one test session share XLA's persistent compilation cache (a fresh
# directory per session, removed at its end): the same tiny programs compile once, not once per
# subprocess. Not in this process: its tests count backend compilations (test_no_recompile).
# pytest-xdist's workers inherit the controller's directory; a size limit makes JAX take a file
# lock around each read and write, so two processes never see a half-written entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="cfg_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 * 2**30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# evaluation.inception_weights = "" looks here (cfg_jax.evaluation.inception); /dev/null is no file.
os.environ["CFG_JAX_INCEPTION_WEIGHTS"] = os.devnull


def pytest_configure(config):
  import jax

  jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
  """(workdir, stderr) of `--mode=train` with helpers.TINY for 4 steps: checkpoints 2 and 4,
  events, grids. Read-only: a test that writes into it copies it first (`trained_copy`)."""
  from tests import helpers

  workdir = str(tmp_path_factory.mktemp("trained_digits"))
  proc = helpers.run_cli(workdir, "--config.training.num_train_steps=4")
  return workdir, proc.stderr


@pytest.fixture
def trained_copy(trained_digits, tmp_path):
  """A private copy of the `trained_digits` workdir, for a test that writes into it."""
  workdir = str(tmp_path / "trained")
  shutil.copytree(trained_digits[0], workdir)
  return workdir
