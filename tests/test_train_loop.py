"""The shared training loop on a toy state (no model, no TF): periodic work at the right steps,
exact resume, SIGTERM → checkpoint and stop, metrics averaged (counts summed) per window, the
non-finite streak limit."""

import itertools
import os
import signal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import checkpointing, sharding, train_loop


@flax.struct.dataclass
class _State:
  step: jax.Array
  total: jax.Array
  nonfinite_streak: jax.Array


def _fresh():
  return _State(
    step=jnp.zeros((), jnp.int32), total=jnp.zeros(()), nonfinite_streak=jnp.zeros((), jnp.int32)
  )


@jax.jit
def _step(state, batch, rng):
  del rng
  x = batch["x"]
  finite = jnp.all(jnp.isfinite(x))
  new = _State(
    step=state.step + 1,
    total=state.total + jnp.where(finite, jnp.sum(x), 0.0),
    nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
  )
  return new, {"loss": jnp.mean(x), "nonfinite": 1.0 - finite.astype(jnp.float32)}


def _batches(sigterm_at=None, nan_from=None):
  """batches(start_step) of the loop: step s gets x = [s, s]; SIGTERM while making step
  `sigterm_at`'s batch; NaN from step `nan_from` on."""

  def make(*, start_step):
    for s in itertools.count(start_step + 1):
      if s == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      yield {"x": np.full((2,), np.nan if nan_from and s >= nan_from else float(s), np.float32)}

  return make


def _run(workdir, num_steps, calls, *, batches=None, **loop_kw):
  loop = train_loop.LoopConfig(
    **{**dict(num_steps=num_steps, batch_size=2, log_every=2, checkpoint_every=2), **loop_kw}
  )

  def periodic(step, state, *, last, writer):
    assert writer is not None and int(state.step) == step
    calls.append((step, last))

  return train_loop.run(
    _fresh(),
    _step,
    workdir=str(workdir),
    loop=loop,
    batches=batches or _batches(),
    mesh=sharding.make_mesh(1),
    rng=jax.random.key(0),
    hparams={"toy": 1},
    metadata={"toy": True},
    periodic=periodic,
  )


def _scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  acc.Reload()
  return [
    (e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)))) for e in acc.Tensors(tag)
  ]


def test_every():
  assert [s for s in range(1, 11) if train_loop.every(s, 4)] == [4, 8]
  assert [s for s in range(1, 11) if train_loop.every(s, 4, last=s == 10)] == [4, 8, 10]
  assert [s for s in range(1, 11) if train_loop.every(s, 0, last=s == 10)] == [10]
  assert not any(train_loop.every(s, 0) for s in range(1, 11))


def test_summarize_averages_and_sums_counts():
  window = [
    {"loss": jnp.array(1.0), "nonfinite": jnp.array(1.0)},
    {"loss": jnp.array(3.0), "nonfinite": jnp.array(0.0)},
    {"loss": jnp.array(5.0), "nonfinite": jnp.array(1.0)},
  ]
  assert train_loop.summarize(window) == pytest.approx({"loss": 3.0, "nonfinite": 2.0})


def test_runs_logs_checkpoints_and_resumes_exactly(tmp_path):
  calls = []
  state = _run(tmp_path / "a", 5, calls)
  assert int(state.step) == 5 and float(state.total) == 2 * (1 + 2 + 3 + 4 + 5)
  assert calls == [(1, False), (2, False), (3, False), (4, False), (5, True)]
  assert [s for s, _ in _scalars(tmp_path / "a", "train/loss")] == [2, 4, 5]
  assert _scalars(tmp_path / "a", "train/loss")[0][1] == 1.5  # mean of steps 1 and 2
  assert _scalars(tmp_path / "a", "train/images_per_sec")[0][1] > 0
  ckpt = checkpointing.Checkpointer(str(tmp_path / "a"), read_only=True)
  assert ckpt.all_steps() == [2, 4, 5] and ckpt.metadata(5)["toy"] is True

  # In two runs (3 steps, then on to 5): the same state; no step trained twice.
  calls = []
  _run(tmp_path / "b", 3, calls)
  resumed = _run(tmp_path / "b", 5, calls)
  assert float(resumed.total) == float(state.total) and int(resumed.step) == 5
  assert calls == [(1, False), (2, False), (3, True), (4, False), (5, True)]
  assert [s for s, _ in _scalars(tmp_path / "b", "train/loss")] == [2, 3, 4, 5]


def test_sigterm_checkpoints_the_step_and_stops(tmp_path):
  calls = []
  state = _run(tmp_path, 6, calls, batches=_batches(sigterm_at=3), checkpoint_every=0)
  assert int(state.step) == 3 and calls == [(1, False), (2, False)]  # no hook at the stop
  ckpt = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [3]
  calls = []
  state = _run(tmp_path, 6, calls, checkpoint_every=0)
  assert int(state.step) == 6 and float(state.total) == 2 * sum(range(1, 7))
  assert calls == [(4, False), (5, False), (6, True)]


def test_nonfinite_streak_limit_stops_the_loop(tmp_path):
  with pytest.raises(train_loop.NonFiniteLossError, match="4 consecutive steps up to step 5"):
    _run(
      tmp_path,
      8,
      [],
      batches=_batches(nan_from=2),
      log_every=1,
      checkpoint_every=1,
      max_consecutive_nonfinite=4,
    )
  assert _scalars(tmp_path, "train/nonfinite") == [(1, 0.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 1.0)]


def _imports_at_load(module: str) -> set[str]:
  """The cfg_jax modules importing `module` loads (its top-level imports, transitively; the
  imports inside functions are lazy and left out)."""
  import ast
  import importlib.util

  seen, todo = set(), [module]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    spec = importlib.util.find_spec(name)
    with open(spec.origin) as f:
      tree = ast.parse(f.read())
    parts = name.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
    for node in tree.body:
      if isinstance(node, ast.Import):
        todo += [a.name for a in node.names if a.name.startswith("cfg_jax")]
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cfg_jax"):
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          todo.append(
            sub
            if importlib.util.find_spec(node.module).submodule_search_locations
            and importlib.util.find_spec(sub)
            else node.module
          )
  return seen


def test_sampling_and_evaluation_do_not_import_training():
  training = {"cfg_jax.training", "cfg_jax.train_loop", "cfg_jax.jobs.train"}
  for module in ("cfg_jax.jobs.sample", "cfg_jax.jobs.evaluate", "cfg_jax.guidance.classifier"):
    loaded = _imports_at_load(module)
    assert "cfg_jax.train_state" in loaded or module.startswith("cfg_jax.guidance")
    assert not training & loaded, (module, sorted(loaded))
  assert "cfg_jax.train_loop" in _imports_at_load("cfg_jax.jobs.train")  # the check sees imports
