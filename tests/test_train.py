"""The sharded train step: 8 devices (data parallel or fsdp) match 1, non-finite steps are skipped,
EMA starts as a copy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import models, sharding, train_state, training
from tests.helpers import tiny_config


def _batches(n, batch_size, seed=0):
  rs = np.random.RandomState(seed)
  return [
    {
      "image": rs.uniform(-1, 1, (batch_size, 8, 8, 1)).astype(np.float32),
      "label": rs.randint(0, 10, (batch_size,)).astype(np.int32),
    }
    for _ in range(n)
  ]


def _run(config, num_devices, batches, fsdp=1):
  mesh = sharding.make_mesh(num_devices, fsdp=fsdp)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, shardings = training.create_train_state(config, model, tx, mesh, (8, 8, 1))
  step = training.make_train_step(model, tx, config, mesh, shardings)
  rng, losses = jax.random.key(7), []
  for b in batches:
    state, m = step(state, sharding.global_batch(b, mesh), rng)
    losses.append(float(m["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def one_device_run():
  config = tiny_config(**{"training.batch_size": 16, "mesh.fsdp_min_size": 1024})
  batches = _batches(4, 16)
  return config, batches, _run(config, 1, batches)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [1, 8])
def test_eight_devices_match_one(one_device_run, fsdp):
  """data 8 x fsdp 1 and data 1 x fsdp 8 (the two ends; a data 4 x fsdp 2 mesh: test_fsdp) give
  the 1-device losses, params, EMA and Adam moments after 4 steps (fsdp_min_size 1024 shards
  most of the tiny U-Net)."""
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  config, batches, (s1, l1) = one_device_run
  s8, l8 = _run(config, 8, batches, fsdp=fsdp)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert int(s8.step) == int(s1.step) == 4
  for tree8, tree1 in (
    (s8.params, s1.params),
    (s8.ema_params, s1.ema_params),
    (s8.opt_state, s1.opt_state),
  ):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), tree8, tree1)
  sharded = [x for x in jax.tree.leaves(s8.params) if not x.sharding.is_fully_replicated]
  assert bool(sharded) == (fsdp > 1)
  assert l1[0] > 0 and np.isfinite(l1).all()


@pytest.mark.slow
def test_nonfinite_update_is_skipped():
  config = tiny_config()
  mesh = sharding.make_mesh(1)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, shardings = training.create_train_state(config, model, tx, mesh, (8, 8, 1))
  before = jax.device_get(state.params)
  step = training.make_train_step(model, tx, config, mesh, shardings)
  bad = _batches(1, 16)[0]
  bad["image"][0, 0, 0, 0] = np.nan
  state, m = step(state, sharding.global_batch(bad, mesh), jax.random.key(0))
  assert float(m["nonfinite"]) == 1.0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
  assert int(state.step) == 1


def test_ema_decay_schedule():
  assert float(training.ema_decay_at(jnp.array(0), 0.999)) == 0.0
  assert float(training.ema_decay_at(jnp.array(1), 0.999)) == pytest.approx(2 / 11)
  assert float(training.ema_decay_at(jnp.array(10**6), 0.999)) == pytest.approx(0.999)


def test_learning_rate_warmup():
  config = tiny_config(**{"training.warmup_steps": 10, "training.learning_rate": 1e-3})
  lr = train_state.learning_rate_schedule(config)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(5e-4)
  assert float(lr(100)) == pytest.approx(1e-3)


@pytest.mark.slow
def test_logged_learning_rate_is_the_applied_one_after_a_skipped_step():
  """During warm-up a skipped (NaN) step does not advance the optimizer's schedule count, so the
  rate logged for every later step must be the schedule at that count, not at state.step."""
  config = tiny_config(**{"training.warmup_steps": 10, "training.learning_rate": 1e-3})
  mesh = sharding.make_mesh(1)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, shardings = training.create_train_state(config, model, tx, mesh, (8, 8, 1))
  step = training.make_train_step(model, tx, config, mesh, shardings)
  batches = _batches(4, 16)
  batches[1]["image"][0, 0, 0, 0] = np.nan
  logged = []
  for b in batches:
    state, m = step(state, sharding.global_batch(b, mesh), jax.random.key(0))
    logged.append(float(m["learning_rate"]))
  # Updates applied at counts 0, (skipped), 1, 2 of the 10-step linear warm-up to 1e-3.
  np.testing.assert_allclose(logged, [0.0, 1e-4, 1e-4, 2e-4], rtol=1e-6)
  assert int(state.step) == 4 and int(train_state.schedule_count(state.opt_state)) == 3
