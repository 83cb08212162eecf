"""--mode=plan: topologies, the roofline and batch search in closed form, and real TPU compiles of
the digits programs (libtpu, compile-only devices) checked against the state's bytes."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec as P

from cfg_jax import models, planning, sharding, train_state, validation
from cfg_jax.jobs import plan as plan_job
from tests.helpers import REPO, load_config

NOISE = ("WARNING: All log", "I0000", "E0000", "libtpu_init", "Source Location", "Failed to find")


def plan_cli(workdir, *args, config="configs/digits.py", timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a plan measures its compiles: none from a cache
  return subprocess.run(
    [sys.executable, "-m", "cfg_jax.main", f"--config={config}", "--mode=plan",
     f"--workdir={workdir}", *args],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
  )  # fmt: skip


@pytest.mark.parametrize(
  "name, version, chips",
  [
    ("v4:2x2x1", "v4", 4),
    ("v5e:16x16", "v5e", 256),
    ("v5p:4x4x4", "v5p", 64),
    ("v6e:4x4", "v6e", 16),
  ],
)
def test_topology_names_and_one_device_per_chip(name, version, chips):
  v, dims = planning.parse_topology(name)
  assert (v, math.prod(dims)) == (version, chips)
  devices = planning.topology_devices(name)
  assert len(devices) == chips  # v4 as megacore: one device per chip, as CHIPS' HBM is per chip
  assert planning.CHIPS[version].hbm_bytes >= 16 * planning.GiB


def test_two_slices_put_fsdp_groups_inside_a_slice():
  devices = planning.topology_devices("v5e:2x2", num_slices=2)
  mesh = planning.make_mesh(devices, fsdp=4)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  for row in mesh.devices:
    assert len({d.slice_index for d in row}) == 1


@pytest.mark.parametrize("name", ["v5e:16", "v4:2x2", "v9:2x2", "tpu", "v5e:0x4"])
def test_bad_topology_names(name):
  with pytest.raises(planning.PlanError, match="not a TPU slice name"):
    planning.parse_topology(name)


def test_roofline_closed_form():
  chip = planning.CHIPS["v5e"]
  compute = planning.roofline(197e12, 819e9 * 0.5, chip)  # 1 s of FLOPs, 0.5 s of bytes
  assert compute["bound"] == "compute"
  assert compute["step_seconds"] == pytest.approx(1.0)
  assert compute["mfu_ceiling"] == pytest.approx(1.0)
  memory = planning.roofline(197e12 * 0.25, 819e9, chip)  # 0.25 s of FLOPs, 1 s of bytes
  assert (memory["bound"], memory["step_seconds"]) == ("memory", pytest.approx(1.0))
  assert memory["mfu_ceiling"] == pytest.approx(0.25)
  report = {"global_batch": 2048, "estimate": memory}
  t = planning.throughput(report, chips=256, num_steps=3600)
  assert t["images_per_second"] == pytest.approx(2048)
  assert t["images_per_second_per_chip"] == pytest.approx(8)
  assert (t["hours"], t["chip_hours"]) == (pytest.approx(1.0), pytest.approx(256))


def test_search_batch_on_an_affine_memory():
  """memory(b) = 3 GiB + b GiB on a 32 GiB chip: the fit predicts (0.9·32 − 3) = 25; the
  compile there fits, so it is the answer after 3 compiles."""
  gib = planning.GiB
  calls = []

  def compile_fn(b):
    calls.append(b)
    total = 3 * gib + b * gib
    return {"total_bytes": total, "fits": total <= 0.9 * 32 * gib}

  s = planning.search_batch(compile_fn, 32 * gib)
  assert (s.best, calls) == (25, [1, 2, 25])

  def superlinear(b):  # the fit from b = 1, 2 overshoots: 10% steps down until it fits
    calls.append(b)
    total = 3 * gib + b * gib + (0.02 * b * b * gib if b > 2 else 0)
    return {"total_bytes": total, "fits": total <= 32 * gib}

  calls.clear()
  s = planning.search_batch(superlinear, 32 * gib)
  assert calls[:3] == [1, 2, 25] and s.best == calls[-1] < 25
  assert superlinear(s.best)["fits"]


def test_oom_bytes_parsed_from_the_compiler_message():
  msg = "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 46.00G of 15.75G hbm. Exceeded hbm capacity by 30.25G."
  assert planning._oom_bytes(msg) == 46 * planning.GiB
  assert planning._oom_bytes("Program (46.00G) exceeds available HBM (15.75G)") == 46 * 2**30


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({}, "plan.topology is empty"),
    ({"topology": "v5e-16"}, "not a TPU slice name"),
    ({"topology": "v5e:4x4", "programs": ("train", "eval")}, "plan.programs"),
    ({"topology": "v5e:4x4", "num_slices": 0}, "plan.num_slices"),
  ],
)
def test_bad_plan_sections_are_config_errors(overrides, field):
  c = load_config("digits")
  with c.unlocked():
    c.plan.update(overrides)
  with pytest.raises(validation.ConfigError, match=field):
    plan_job.check(c)


def test_bad_plan_section_from_the_cli_is_one_error_without_traceback(tmp_path):
  proc = plan_cli(tmp_path, "--config.plan.topology=v5e:16", timeout=120)
  assert proc.returncode == 1
  assert "ERROR ConfigError" in proc.stderr and "not a TPU slice name" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "plan.json").exists()


def test_without_libtpu_the_error_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu raises ImportError
  with pytest.raises(planning.PlanError, match=r"cfg_jax\[tpu-plan\]"):
    planning.topology_devices("v5e:2x2")


def _state_bytes_per_chip(config, fsdp: int) -> int:
  """The known answer: params, EMA and Adam's two moments are float32 (16 bytes a parameter),
  each array divided by fsdp where the sharding rule shards it; the optimizer's scalar counters
  4 bytes; the per-chip batch (float32 images, int32 labels); the PRNG key 8 bytes."""
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  shape = models.image_shape(config)
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, *shape)), jax.numpy.zeros((1,)),
                       jax.numpy.zeros((1,), "int32"), train=False)["params"]
  )  # fmt: skip
  assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == models.count_params(
    model, shape
  )
  min_size = config.mesh.fsdp_min_size
  per_param = sum(
    math.prod(p.shape) // (fsdp if sharding.param_spec(p.shape, fsdp, min_size) != P() else 1)
    for p in jax.tree.leaves(params)
  )
  state = jax.eval_shape(
    lambda: train_state.init_state(jax.random.key(0), model=model, tx=tx, shape=shape)
  )
  scalars = sum(1 for x in jax.tree.leaves(state) if x.ndim == 0)
  per_chip_batch = config.training.batch_size // 4
  return 16 * per_param + 4 * scalars + per_chip_batch * (math.prod(shape) * 4 + 4) + 8


@pytest.mark.slow  # two TPU compiles of the digits programs, ~1.5 min
def test_digits_plans_on_v4_and_its_bytes_are_the_states(tmp_path):
  """The digits train and sampling steps compile for v4:2x2x1 with the real TPU compiler; the
  train step's arguments per chip are the state's bytes from the parameter count (to the byte,
  before the compiler's layout padding, which only adds), the sampling step's forward is 2B."""
  proc = plan_cli(
    tmp_path, "--config.plan.topology=v4:2x2x1", "--config.plan.programs=('train','sample')"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = json.loads((tmp_path / "plan.json").read_text())
  assert (plan["chips"], plan["mesh"]) == (4, {"data": 4, "fsdp": 1})
  train, sample = plan["programs"]["train"], plan["programs"]["sample"]
  config = load_config("digits")
  validation.validate(config, num_devices=4)
  assert train["logical_argument_bytes"] == _state_bytes_per_chip(config, fsdp=1)
  assert train["argument_bytes"] >= train["logical_argument_bytes"]
  assert train["alias_bytes"] > 0.9 * 16 * plan["model"]["params"]  # the donated state
  assert train["fits"] and sample["fits"] and train["flops"] > 0
  assert train["throughput"]["chip_hours"] > 0
  assert sample["global_batch"] == config.sampling.batch_size
  assert "ESTIMATES" in proc.stdout and "chip-hours" in proc.stdout


@pytest.mark.slow  # one TPU compile, ~40 s
def test_fsdp_mesh_compiles_and_shards_the_state(tmp_path):
  """mesh.fsdp=4 (all four chips), arrays of at least 1024 elements sharded: the per-chip
  arguments drop to the sharded state's bytes, as the rule computes them."""
  proc = plan_cli(
    tmp_path,
    "--config.plan.topology=v4:2x2x1",
    "--config.plan.programs=('train',)",
    "--config.mesh.fsdp=4",
    "--config.mesh.fsdp_min_size=1024",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = json.loads((tmp_path / "plan.json").read_text())
  assert plan["mesh"] == {"data": 1, "fsdp": 4}
  config = load_config("digits")
  with config.unlocked():
    config.mesh.fsdp, config.mesh.fsdp_min_size = 4, 1024
  validation.validate(config, num_devices=4)
  expected = _state_bytes_per_chip(config, fsdp=4)
  assert plan["programs"]["train"]["logical_argument_bytes"] == expected
  assert expected < _state_bytes_per_chip(load_config("digits"), fsdp=1) * 0.5


@pytest.mark.slow  # the compiler stops early: ~20 s
def test_a_plan_that_cannot_fit_is_one_clear_error(tmp_path):
  """A 1.6B-parameter DiT's state (26 GB) on a 16 GiB v5e chip: the compiler's own
  RESOURCE_EXHAUSTED becomes one error naming the HBM, the bytes asked and the fields to change;
  exit 1, no traceback, plan.json kept with fits=false."""
  proc = plan_cli(
    tmp_path,
    "--config.plan.topology=v5e:2x2",
    "--config.plan.programs=('train',)",
    "--config.model.name=dit",
    "--config.model.dit_hidden_size=4096",
    "--config.model.dit_depth=8",
    "--config.model.dit_num_heads=32",
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "ERROR PlanError" in proc.stderr and "Traceback" not in proc.stderr
  assert "15.75" in proc.stderr or "16.00 GiB" in proc.stderr
  for field in ("--config.training.batch_size", "--config.mesh.fsdp", "--config.model.remat"):
    assert field in proc.stderr
  plan = json.loads((tmp_path / "plan.json").read_text())
  assert plan["programs"]["train"]["fits"] is False
  assert plan["programs"]["train"]["total_bytes"] > 16 * planning.GiB
