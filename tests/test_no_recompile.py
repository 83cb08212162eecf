"""The steady-state training and sampling loops neither recompile nor move data implicitly.

After a first (compiling) call with inputs already on device, further iterations run under
`jax.transfer_guard("disallow")` (any implicit host<->device transfer raises) while a
`jax.monitoring` listener counts backend compilations (any recompile, including of small eager
ops, is counted). The train loop iteration is the one of `train.train_and_evaluate`: a host batch
placed with `sharding.global_batch` (an explicit transfer), then the donated train step.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import models, sampling, sampling_runner, sharding, train_state, training
from tests.helpers import tiny_config

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
  """Yields a list that gets one entry per XLA backend compilation inside the block."""
  compiles: list[str] = []

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration
    if event == BACKEND_COMPILE_EVENT:
      compiles.append(str(kwargs.get("fun_name", "?")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def steady_state():
  """No implicit transfers (raise) and no compilations (checked at exit) inside the block."""
  with count_compiles() as compiles, jax.transfer_guard("disallow"):
    yield
  assert not compiles, f"recompiled inside the steady-state loop: {compiles}"


def test_count_compiles_sees_a_recompile():
  """The counter is live: a new input shape compiles again."""
  f = jax.jit(lambda x: x * 2.0)
  f(jnp.ones(3))
  with count_compiles() as compiles:
    f(jnp.ones(3))
    assert not compiles
    f(jnp.ones(4))
  assert compiles


def test_transfer_guard_catches_a_host_array():
  """The guard is live: a numpy argument to a jitted function is an implicit transfer."""
  f = jax.jit(lambda x: x + 1.0)
  f(jnp.ones(2))
  with pytest.raises(Exception, match="[Dd]isallowed"):
    with jax.transfer_guard("disallow"):
      f(np.ones(2, np.float32))


@pytest.mark.slow
def test_train_loop_does_not_recompile_or_transfer():
  config = tiny_config()
  mesh = sharding.make_mesh()
  shape = (8, 8, 1)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, state_sharding = training.create_train_state(config, model, tx, mesh, shape)
  step_fn = training.make_train_step(model, tx, config, mesh, state_sharding)
  b = config.training.batch_size
  rs = np.random.RandomState(0)
  host_batches = [
    {
      "image": rs.uniform(-1, 1, (b, *shape)).astype(np.float32),
      "label": rs.randint(0, 10, (b,)).astype(np.int32),
    }
    for _ in range(4)
  ]
  rng = jax.device_put(jax.random.key(0), sharding.replicated(mesh))

  state, metrics = step_fn(state, sharding.global_batch(host_batches[0], mesh), rng)
  jax.block_until_ready((state, metrics))
  with steady_state():
    for host_batch in host_batches[1:]:
      batch = sharding.global_batch(host_batch, mesh)
      state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready((state, metrics))
  assert step_fn._cache_size() == 1
  assert int(jax.device_get(state.step)) == len(host_batches)


@pytest.mark.slow
def test_sampling_loop_does_not_recompile_or_transfer():
  config = tiny_config()
  mesh = sharding.make_mesh()
  shape = (8, 8, 1)
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state, _ = training.create_train_state(config, model, tx, mesh, shape)
  sampler = sampling_runner.make_sampler(
    model.apply,
    shape=shape,
    null_label=10,
    mesh=mesh,
    config=sampling.SamplerConfig.from_config(config),
  )
  b = 2 * mesh.size
  rep, dat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  rng = jax.device_put(jax.random.key(1), rep)
  calls = [
    jax.device_put(
      (
        jnp.arange(i * b, (i + 1) * b, dtype=jnp.int32),
        jnp.arange(b, dtype=jnp.int32) % 10,
        jnp.full((b,), float(w), jnp.float32),
      ),
      dat,
    )
    for i, w in enumerate((0.0, 1.0, 3.0))
  ]

  jax.block_until_ready(sampler(state.ema_params, rng, *calls[0]))
  with steady_state():
    outs = [sampler(state.ema_params, rng, *call) for call in calls[1:]]
    jax.block_until_ready(outs)
  assert sampler.jitted._cache_size() == 1
  assert all(o.shape == (b, *shape) for o in outs)
