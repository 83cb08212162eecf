"""The (data, fsdp) mesh: which arrays shard how, that they really are sharded, that sampling
works from fsdp-sharded params, the config errors, and `--config.mesh.fsdp` through the CLI."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cfg_jax import config_lib, sampling, sharding, train
from tests.helpers import REPO, tiny_config

FSDP_SPEC = P(None, None, None, "fsdp")


@pytest.mark.parametrize("shape,fsdp,min_size,spec", [
    ((3, 3, 16, 32), 2, 1, FSDP_SPEC),             # largest divisible dim: output channels
    ((3, 3, 32, 16), 2, 1, P(None, None, "fsdp")),  # ... or input channels when larger
    ((64, 64), 4, 1, P(None, "fsdp")),              # ties go to the last dimension
    ((48, 30), 4, 1, P("fsdp")),                    # 30 is not divisible by 4
    ((15, 3), 2, 1, P()),                           # nothing divisible: replicated
    ((3, 3, 16, 32), 2, 10_000, P()),               # below fsdp_min_size: replicated
    ((3, 3, 16, 32), 1, 1, P()),                    # fsdp = 1: data parallel
    ((), 2, 0, P()),                                # scalars (step counters)
])
def test_param_spec_rules(shape, fsdp, min_size, spec):
  assert sharding.param_spec(shape, fsdp, min_size) == spec


def test_mesh_shape_and_batch_split():
  mesh = sharding.make_mesh(8, fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  batch = sharding.global_batch({"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}  # 16 / 8 devices
  assert sorted(int(s.data[0, 0]) // 3 for s in batch["x"].addressable_shards) == list(
      range(0, 16, 2))
  with pytest.raises(ValueError, match=r"mesh.fsdp=3 does not divide the 8 devices"):
    sharding.make_mesh(8, fsdp=3)


@pytest.fixture(scope="module")
def fsdp_state():
  config = tiny_config(**{"mesh.fsdp": 2, "mesh.fsdp_min_size": 1024})
  mesh = sharding.make_mesh_from_config(config)
  model, tx = train.create_model(config), train.create_optimizer(config)
  state, shardings = train.create_train_state(config, model, tx, mesh, (8, 8, 1))
  return config, mesh, model, state


def test_params_ema_and_adam_moments_are_sharded(fsdp_state):
  _, mesh, _, state = fsdp_state
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  kernel = state.params["down_0_res_0"]["conv_in"]["kernel"]  # 3x3x16x16 = 2304 elements
  adam = state.opt_state[1][0]  # (clip, adam) chain; ScaleByAdamState
  for x in (kernel, state.ema_params["down_0_res_0"]["conv_in"]["kernel"],
            adam.mu["down_0_res_0"]["conv_in"]["kernel"],
            adam.nu["down_0_res_0"]["conv_in"]["kernel"]):
    assert x.shape == (3, 3, 16, 16)
    assert {s.data.shape for s in x.addressable_shards} == {(3, 3, 16, 8)}
    assert x.sharding.spec == FSDP_SPEC
  bias = state.params["down_0_res_0"]["conv_in"]["bias"]  # 16 elements: replicated
  assert {s.data.shape for s in bias.addressable_shards} == {(16,)}
  assert state.step.sharding.is_fully_replicated

  def per_device_bytes(tree):
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))

  def total_bytes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree))

  # Most of the tiny U-Net's parameters are in arrays of >= 1024 elements: ~half per device.
  assert per_device_bytes(state.params) < 0.6 * total_bytes(state.params)


def test_sampling_from_fsdp_params_matches_one_device(fsdp_state):
  config, mesh, model, state = fsdp_state
  cfg = sampling.SamplerConfig.from_config(config)
  labels = np.arange(10, dtype=np.int32)
  rng = jax.random.key(3)
  gathered = sharding.gather_replicated(state.ema_params)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(gathered))
  x8 = sampling.generate(
      sampling.make_sampler(model.apply, shape=(8, 8, 1), null_label=10, config=cfg, mesh=mesh),
      state.ema_params, rng, labels=labels, w=1.0, batch_size=16, num_devices=mesh.size)
  one = sharding.make_mesh(1)
  params1 = jax.device_put(jax.device_get(state.ema_params), sharding.replicated(one))
  x1 = sampling.generate(
      sampling.make_sampler(model.apply, shape=(8, 8, 1), null_label=10, config=cfg, mesh=one),
      params1, rng, labels=labels, w=1.0, batch_size=16, num_devices=1)
  assert x8.shape == (10, 8, 8, 1)
  np.testing.assert_allclose(x8, x1, atol=1e-4)


@pytest.mark.parametrize("overrides,match", [
    ({"mesh.fsdp": 3}, r"mesh.fsdp=3 does not divide the 8 devices .*use one of \[1, 2, 4, 8\]"),
    ({"mesh.fsdp": 0}, r"mesh.fsdp must be >= 1"),
    ({"mesh.fsdp_min_size": -1}, r"mesh.fsdp_min_size must be >= 0"),
    ({"mesh.fsdp": 2, "training.batch_size": 12},
     r"training.batch_size=12 is not divisible by the 8 devices of the mesh \(data=4 x fsdp=2\)"),
])
def test_mesh_config_errors(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides), num_devices=8)


def test_cli_trains_and_samples_with_fsdp(tmp_path):
  """`--config.mesh.fsdp=2` on 4 devices trains, checkpoints and writes sample grids; the fsdp
  checkpoint then restores into a data-parallel mesh for --mode=sample."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  common = [sys.executable, "-m", "cfg_jax.main", "--config=configs/digits.py",
            f"--workdir={tmp_path}", "--config.training.batch_size=16",
            "--config.training.num_train_steps=2", "--config.training.log_every_steps=1",
            "--config.training.grid_samples_per_class=1", "--config.sampling.num_steps=4",
            "--config.sampling.num_samples=4", "--config.evaluation.judge_num_samples=0",
            "--config.mesh.fsdp_min_size=1024"]
  for extra in (["--config.mesh.fsdp=2"], ["--mode=sample", "--config.mesh.fsdp=1"]):
    proc = subprocess.run(common + extra, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert (tmp_path / "samples" / "step_00000002_w1.png").stat().st_size > 100
  with np.load(tmp_path / "sample" / "step_00000002" / "samples.npz") as f:
    assert f["images"].shape == (3, 4, 8, 8, 1)
