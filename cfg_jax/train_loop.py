"""The one training loop of cfg_jax: resume, step, log, checkpoint, stop on preemption.

`run` serves every job that trains a network (the diffusion model of `jobs/train.py`, the noisy
classifier of `jobs/train_classifier.py`, each distilled student of `jobs/distill.py`): the job brings its state (a pytree with
a `step` field), a jitted step function (state, batch, rng) → (state, metrics) and a `periodic`
hook for its own work (sample grids, evaluations); the loop restores the newest intact checkpoint
or keeps the fresh state, runs the steps, logs the metrics averaged over each logging window to
TensorBoard under `train/`, checkpoints, and on SIGTERM saves the step and returns. All periodic
work, the loop's and the hooks', asks `every(step, n, last=...)`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from cfg_jax import checkpointing, preemption, writers
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import pipeline
from cfg_jax.errors import UserError

State = TypeVar("State")
# (state, global batch, rng) -> (state, metrics): the jitted step of a job.
StepFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[Any, dict[str, jax.Array]]]
# Metrics summed over a logging window (counts); the others are averaged.
COUNT_METRICS = ("nonfinite",)


class NonFiniteLossError(UserError, FloatingPointError):
  """Too many consecutive steps had a non-finite loss or gradient."""


def every(step: int, n: int, *, last: bool = False) -> bool:
  """Whether work of period `n` runs at `step`: every n-th step and at the last step
  (n <= 0: at the last step only)."""
  return last or (n > 0 and step % n == 0)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The step counts of a training loop.

  Attributes:
    num_steps: train until state.step reaches it.
    batch_size: the global batch (for images_per_sec).
    log_every: average and write the metrics every that many steps (and at the last).
    checkpoint_every: checkpoint every that many steps (and at the last; 0: the last only).
    max_to_keep: checkpoints kept (None: all).
    max_consecutive_nonfinite: stop with NonFiniteLossError after that many skipped steps in a
      row (0: never; the state needs a `nonfinite_streak` field otherwise).
    section: the config section these come from, named in error messages.
  """

  num_steps: int
  batch_size: int
  log_every: int
  checkpoint_every: int
  max_to_keep: int | None = 3
  max_consecutive_nonfinite: int = 0
  section: str = "training"


def loop_inputs(
  config: ml_collections.ConfigDict, *, num_steps: int, section: str = "training"
) -> dict[str, Any]:
  """`run`'s `loop` and `batches` for `num_steps` steps at the batch size and logging / checkpoint
  cadence of config section `section` (training, distillation phases, the classifier), on this
  process's share of the training data."""
  s = config[section]
  # Sections without these fields (the classifier's) keep LoopConfig's defaults.
  optional = {
    "max_to_keep": "max_checkpoints_to_keep",
    "max_consecutive_nonfinite": "max_consecutive_nonfinite",
  }
  return {
    "loop": LoopConfig(
      num_steps=num_steps,
      batch_size=s.batch_size,
      log_every=s.log_every_steps,
      checkpoint_every=s.checkpoint_every_steps,
      section=section,
      **{k: s[f] for k, f in optional.items() if f in s},
    ),
    "batches": functools.partial(
      pipeline.train_iterator,
      config.data,
      global_batch_size=s.batch_size,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ),
  }


def check_nonfinite_streak(state: Any, loop: LoopConfig, ckpt: checkpointing.Checkpointer) -> None:
  """Raises NonFiniteLossError after loop.max_consecutive_nonfinite skipped steps in a row
  (checked at log steps; skipped steps never change the parameters, so nothing is lost)."""
  limit = loop.max_consecutive_nonfinite
  if limit <= 0:
    return
  streak = int(state.nonfinite_streak)
  if streak >= limit:
    s = loop.section
    raise NonFiniteLossError(
      f"{streak} consecutive steps up to step {int(state.step)} had a non-finite loss or "
      f"gradient (limit {s}.max_consecutive_nonfinite={limit}); their updates were "
      f"skipped and the last good checkpoint (step {ckpt.latest_step()}) is kept. Lower "
      f"{s}.learning_rate, enable {s}.grad_clip, or check the data."
    )


def format_duration(seconds: float) -> str:
  """'1h02m03s', '4m05s' or '12s' (rounded to the second)."""
  s = int(round(max(seconds, 0.0)))
  h, m = s // 3600, s // 60 % 60
  if h:
    return f"{h}h{m:02d}m{s % 60:02d}s"
  return f"{m}m{s % 60:02d}s" if m else f"{s}s"


def progress_line(*, step: int, num_steps: int, summary: Mapping[str, float]) -> str:
  """The console line of a logging window: step, metrics, throughput and the ETA from the
  measured step rate (summary['steps_per_sec'], absent for a window of only the compiling step)."""
  rate = summary.get("steps_per_sec")
  shown = ", ".join(
    f"{k}={v:.4g}" for k, v in summary.items() if k not in ("steps_per_sec", "images_per_sec")
  )
  line = f"step {step}/{num_steps}: {shown}"
  if rate:
    eta = format_duration((num_steps - step) / rate)
    line += f"; {rate:.3g} steps/s, {summary['images_per_sec']:,.0f} images/s, ETA {eta}"
  return line


def summarize(window: list[dict[str, jax.Array]]) -> dict[str, float]:
  """The metrics of a logging window's steps: averaged, COUNT_METRICS summed."""
  summary = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(window))
  for k in COUNT_METRICS:
    if k in summary:
      summary[k] *= len(window)
  return summary


def save_or_stop(
  ckpt: checkpointing.Checkpointer,
  step: int,
  state: Any,
  *,
  last: bool,
  every_steps: int,
  watcher: preemption.PreemptionWatcher,
  metadata: dict,
) -> bool:
  """The checkpoint duty of a step: saves at every `every_steps` steps and at the last; when
  `watcher` (asked at every step on every process) requests a stop before the last step, makes
  sure `step` is saved, closes, and returns True: the loop stops."""
  if every(step, every_steps, last=last):
    ckpt.save(step, state, metadata=metadata)
  if last or not watcher.should_stop(step):
    return False
  if ckpt.latest_step() != step:
    ckpt.save(step, state, metadata=metadata)
  ckpt.close()
  return True


def run(
  state: State,
  step_fn: StepFn,
  *,
  workdir: str,
  loop: LoopConfig,
  batches: Callable[..., Iterator[dict[str, np.ndarray]]],
  mesh,
  rng: jax.Array,
  hparams: Mapping[str, Any],
  metadata: dict,
  periodic: Callable[..., None] | None = None,
  what: str = "",
) -> State:
  """Trains `state` to loop.num_steps; resumes from `<workdir>/checkpoints` when it holds one.

  Args:
    state: the fresh state (sharded as the step expects); replaced by the newest intact
      checkpoint of `workdir` when there is one.
    step_fn: the jitted step (state, global batch, rng) -> (state, metrics); the same `rng` is
      passed at every step (fold in state.step inside).
    workdir: checkpoints in `<workdir>/checkpoints`, TensorBoard events in `workdir`.
    batches: batches(start_step=s) -> iterator of this process's batches from step s + 1 on.
    hparams: written to TensorBoard at step 0.
    metadata: JSON saved beside every checkpoint.
    periodic: periodic(step, state, last=..., writer=...) after each step's checkpoint, for the
      job's own work (asking `every`); not called at the step the loop stops for preemption.
    what: prefix of the log lines of resume and preemption (e.g. 'Classifier').
  Returns the state at the end, or at the preemption.
  """
  prefix = f"{what}: " if what else ""
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=loop.max_to_keep)
  try:
    state = ckpt.restore_or(state, what=what)
  except BaseException:
    ckpt.close()
    raise
  start_step = int(state.step)
  writer = writers.create_writer(workdir)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in hparams.items()})
  host_batches = batches(start_step=start_step)
  window: list[dict[str, jax.Array]] = []
  # The step rate is timed from the end of this run's first step: it compiles.
  rate_time, rate_step = None, start_step + 1

  # The checkpointer closes on every exit (a NonFiniteLossError too): a save in flight commits.
  with ckpt, metric_writers.ensure_flushes(writer), preemption.PreemptionWatcher() as watcher:
    for step in range(start_step + 1, loop.num_steps + 1):
      batch = sharding_lib.global_batch(next(host_batches), mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, batch, rng)
      window.append(metrics)
      if rate_time is None:
        jax.block_until_ready(metrics)
        rate_time = time.time()
      last = step == loop.num_steps
      if every(step, loop.log_every, last=last):
        summary, now = summarize(window), time.time()
        if step > rate_step:
          summary["steps_per_sec"] = (step - rate_step) / (now - rate_time)
          summary["images_per_sec"] = summary["steps_per_sec"] * loop.batch_size
        rate_time, rate_step, window = now, step, []
        writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        logging.info(
          "%s%s", prefix, progress_line(step=step, num_steps=loop.num_steps, summary=summary)
        )
        check_nonfinite_streak(state, loop, ckpt)
      if save_or_stop(
        ckpt,
        step,
        state,
        last=last,
        every_steps=loop.checkpoint_every,
        watcher=watcher,
        metadata=metadata,
      ):
        logging.warning(
          "%sPreempted: saved checkpoint step %d and stopped; run the same "
          "command again to resume.",
          prefix,
          step,
        )
        return state
      if periodic is not None:
        periodic(step, state, last=last, writer=writer)
  return state
