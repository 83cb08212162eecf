"""The (data, fsdp) mesh: which arrays shard how, that they really are sharded, that sampling
works from fsdp-sharded params, the config errors, and `--config.mesh.fsdp` through the CLI."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from cfg_jax import (
  checkpointing,
  config_lib,
  models,
  sampling,
  sampling_runner,
  sharding,
  train_state,
  training,
  validation,
)
from cfg_jax.evaluation import features
from cfg_jax.jobs import evaluate as evaluate_job
from tests.helpers import REPO, cli_env, tiny_config

FSDP_SPEC = P(None, None, None, "fsdp")


@pytest.mark.parametrize(
  "shape,fsdp,min_size,spec",
  [
    ((3, 3, 16, 32), 2, 1, FSDP_SPEC),  # largest divisible dim: output channels
    ((3, 3, 32, 16), 2, 1, P(None, None, "fsdp")),  # ... or input channels when larger
    ((64, 64), 4, 1, P(None, "fsdp")),  # ties go to the last dimension
    ((48, 30), 4, 1, P("fsdp")),  # 30 is not divisible by 4
    ((15, 3), 2, 1, P()),  # nothing divisible: replicated
    ((3, 3, 16, 32), 2, 10_000, P()),  # below fsdp_min_size: replicated
    ((3, 3, 16, 32), 1, 1, P()),  # fsdp = 1: data parallel
    ((), 2, 0, P()),  # scalars (step counters)
  ],
)
def test_param_spec_rules(shape, fsdp, min_size, spec):
  assert sharding.param_spec(shape, fsdp, min_size) == spec


def test_mesh_shape_and_batch_split():
  mesh = sharding.make_mesh(8, fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  batch = sharding.global_batch({"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}  # 16 / 8 devices
  assert sorted(int(s.data[0, 0]) // 3 for s in batch["x"].addressable_shards) == list(
    range(0, 16, 2)
  )
  with pytest.raises(ValueError, match=r"mesh.fsdp=3 does not divide the 8 devices"):
    sharding.make_mesh(8, fsdp=3)


@pytest.fixture(scope="module")
def fsdp_state():
  config = tiny_config(**{"mesh.fsdp": 2, "mesh.fsdp_min_size": 1024})
  mesh = sharding.make_mesh_from_config(config)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, shardings = training.create_train_state(config, model, tx, mesh, (8, 8, 1))
  return config, mesh, model, state


@pytest.mark.slow
def test_params_ema_and_adam_moments_are_sharded(fsdp_state):
  _, mesh, _, state = fsdp_state
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  kernel = state.params["down_0_res_0"]["conv_in"]["kernel"]  # 3x3x16x16 = 2304 elements
  adam = state.opt_state[1][0]  # (clip, adam) chain; ScaleByAdamState
  for x in (
    kernel,
    state.ema_params["down_0_res_0"]["conv_in"]["kernel"],
    adam.mu["down_0_res_0"]["conv_in"]["kernel"],
    adam.nu["down_0_res_0"]["conv_in"]["kernel"],
  ):
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


@pytest.mark.slow
def test_sampling_from_fsdp_params_matches_one_device(fsdp_state):
  config, mesh, model, state = fsdp_state
  cfg = sampling.SamplerConfig.from_config(config)
  labels = np.arange(10, dtype=np.int32)
  rng = jax.random.key(3)
  gathered = sharding.gather_replicated(state.ema_params)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(gathered))
  x8 = sampling_runner.generate(
    sampling_runner.make_sampler(
      model.apply, shape=(8, 8, 1), null_label=10, config=cfg, mesh=mesh
    ),
    state.ema_params,
    rng,
    labels=labels,
    w=1.0,
    batch_size=16,
    mesh=mesh,
  )
  one = sharding.make_mesh(1)
  params1 = jax.device_put(jax.device_get(state.ema_params), sharding.replicated(one))
  x1 = sampling_runner.generate(
    sampling_runner.make_sampler(model.apply, shape=(8, 8, 1), null_label=10, config=cfg, mesh=one),
    params1,
    rng,
    labels=labels,
    w=1.0,
    batch_size=16,
    mesh=one,
  )
  assert x8.shape == (10, 8, 8, 1)
  np.testing.assert_allclose(x8, x1, atol=1e-4)


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"mesh.fsdp": 3}, r"mesh.fsdp=3 does not divide the 8 devices .*use one of \[1, 2, 4, 8\]"),
    ({"mesh.fsdp": 0}, r"mesh.fsdp must be >= 1"),
    ({"mesh.fsdp_min_size": -1}, r"mesh.fsdp_min_size must be >= 0"),
    (
      {"mesh.fsdp": 2, "training.batch_size": 12},
      r"training.batch_size=12 is not divisible by the 8 devices of the mesh \(data=4 x fsdp=2\)",
    ),
  ],
)
def test_mesh_config_errors(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    validation.validate(tiny_config(**overrides), num_devices=8)


@pytest.mark.slow
def test_cli_trains_and_samples_with_fsdp(tmp_path):
  """`--config.mesh.fsdp=2` on 4 devices trains, checkpoints and writes sample grids; the fsdp
  checkpoint then restores into a data-parallel mesh for --mode=sample."""
  env = cli_env(4)
  common = [
    sys.executable,
    "-m",
    "cfg_jax.main",
    "--config=configs/digits.py",
    f"--workdir={tmp_path}",
    "--config.training.batch_size=16",
    "--config.training.num_train_steps=2",
    "--config.training.log_every_steps=1",
    "--config.training.grid_samples_per_class=1",
    "--config.sampling.num_steps=4",
    "--config.sampling.num_samples=4",
    "--config.evaluation.judge_num_samples=0",
    "--config.mesh.fsdp_min_size=1024",
  ]
  for extra in (["--config.mesh.fsdp=2"], ["--mode=sample", "--config.mesh.fsdp=1"]):
    proc = subprocess.run(
      common + extra, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert (tmp_path / "samples" / "step_00000002_w1.png").stat().st_size > 100
  with np.load(tmp_path / "sample" / "step_00000002" / "samples.npz") as f:
    assert f["images"].shape == (3, 4, 8, 8, 1)


@pytest.fixture(scope="module")
def fsdp_checkpoint(fsdp_state, tmp_path_factory):
  """fsdp_state saved at step 1 in a workdir, with EMA params that differ from the params."""
  config, _, _, state = fsdp_state
  state = state.replace(ema_params=jax.tree.map(lambda x: 0.5 * x + 0.25, state.ema_params))
  workdir = str(tmp_path_factory.mktemp("fsdp_ckpt"))
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save(1, state, metadata={"config": config.to_json()})
  ckpt.close()
  return workdir, state


def _record_reads(monkeypatch) -> list[tuple[str, object]]:
  """(name, requested sharding) of every array orbax deserialises from now on."""
  reads, deserialize = [], ocp.type_handlers.ArrayHandler.deserialize

  async def spy(self, infos, args=None):
    reads.extend((i.name, getattr(a, "sharding", None)) for i, a in zip(infos, args or infos))
    return await deserialize(self, infos, args)

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", spy)
  return reads


@pytest.mark.slow
@pytest.mark.parametrize("use_ema", [True, False])
def test_load_params_reads_only_the_params_it_returns(
  fsdp_state, fsdp_checkpoint, monkeypatch, use_ema
):
  """Sampling and evaluation restore the EMA (or raw) params alone, in the fsdp plan of the
  training mesh: the optimizer state (2x the params under Adam) is never read."""
  config, mesh, _, _ = fsdp_state
  workdir, saved = fsdp_checkpoint
  want = saved.ema_params if use_ema else saved.params
  reads = _record_reads(monkeypatch)
  params, step = train_state.restore_params(
    config, workdir, mesh, step=None, use_ema=use_ema, gather=True
  )
  assert step == 1
  field = "ema_params" if use_ema else "params"
  assert {n for n, _ in reads} == {
    field + "." + ".".join(str(k.key) for k in p) for p, _ in jax.tree.leaves_with_path(want)
  }
  assert len(reads) == len(jax.tree.leaves(want))  # each once
  assert dict(reads)[f"{field}.down_0_res_0.conv_in.kernel"].spec == FSDP_SPEC  # read as sharded
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(want))
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(params))  # for the sampler


def test_restore_params_keeps_the_fsdp_plan(fsdp_state, fsdp_checkpoint):
  """restore_params gives the EMA params in the shardings training gave them (before the
  samplers' gather): sharded over fsdp where the plan says so."""
  config, mesh, _, state = fsdp_state
  workdir, saved = fsdp_checkpoint
  params, _ = train_state.restore_params(config, workdir, mesh, step=1)
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(params), jax.device_get(saved.ema_params)
  )
  for x, trained in zip(jax.tree.leaves(params), jax.tree.leaves(state.ema_params)):
    assert x.sharding.is_equivalent_to(trained.sharding, x.ndim), (x.sharding, trained.sharding)
  kernel = params["down_0_res_0"]["conv_in"]["kernel"]
  assert kernel.sharding.spec == FSDP_SPEC
  assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 16, 8)}


def test_restore_params_checks_the_fingerprint_of_what_it_reads(
  fsdp_state, fsdp_checkpoint, tmp_path
):
  """The fingerprint entries of the restored leaves (and only those) are checked: a tampered EMA
  entry fails the EMA restore, not the raw-params restore, and vice versa."""
  config, mesh, _, _ = fsdp_state
  workdir, saved = fsdp_checkpoint
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  meta_path = copy / "checkpoints" / "1" / "metadata" / "metadata"
  meta = json.loads(meta_path.read_text())
  n = len(jax.tree.leaves(saved.params))
  assert len(meta["fingerprint"]) == len(jax.tree.leaves(saved))
  first_ema = 1 + n  # leaves: step, params, ema_params, opt_state, nonfinite_streak
  meta["fingerprint"][first_ema][1] += 1.0
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(checkpointing.CheckpointError, match="corrupt"):
    train_state.restore_params(config, str(copy), mesh, step=1, use_ema=True)
  train_state.restore_params(config, str(copy), mesh, step=1, use_ema=False)
  meta["fingerprint"][first_ema][1] -= 1.0
  meta["fingerprint"][1][0] += 1.0  # the first leaf of params
  meta_path.write_text(json.dumps(meta))
  train_state.restore_params(config, str(copy), mesh, step=1, use_ema=True)
  with pytest.raises(checkpointing.CheckpointError, match="corrupt"):
    train_state.restore_params(config, str(copy), mesh, step=1, use_ema=False)


def test_evaluator_uses_the_config_mesh(fsdp_state, fsdp_checkpoint, monkeypatch):
  """The evaluator builds the (data, fsdp) mesh of config.mesh, restores the checkpoint's EMA
  params into it without its optimizer state, and runs a sweep."""
  config, _, _, _ = fsdp_state
  workdir, _ = fsdp_checkpoint
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.evaluation.num_samples = 16
    config.evaluation.batch_size = 16
    config.evaluation.w_values = (1.0,)
    config.evaluation.num_steps_values = (2,)
  flat = lambda x: x.reshape(len(x), -1)
  net = features.FeatureNet("stub", lambda x: (flat(x), flat(x)[:, :10]), True)
  monkeypatch.setattr(features, "feature_net", lambda config, mesh=None: net)
  monkeypatch.setattr(features, "reference_features", lambda config, net, workdir: {})
  monkeypatch.setattr(
    features,
    "sample_metrics",
    lambda feats, logits, labels, net, ref, pr_k=3: {
      k: float(np.mean(feats))
      for k in ("fd", "is", "is_std", "precision", "recall", "class_accuracy")
    },
  )
  evaluator = evaluate_job.Evaluator(config, workdir)
  assert dict(evaluator.mesh.shape) == {"data": 4, "fsdp": 2}
  reads = _record_reads(monkeypatch)
  rows = evaluator.evaluate_step(1)
  assert [(r["step"], r["w"]) for r in rows] == [(1, 1.0)] and np.isfinite(rows[0]["fd"])
  assert reads and {n.split(".")[0] for n, _ in reads} == {"ema_params"}
