"""Preemption: SIGTERM asks training to checkpoint at the next step boundary and exit cleanly.

Single process: our SIGTERM handler sets a flag. Multi-process (jax.distributed): JAX's
coordination service already turns a SIGTERM on any host into a preemption notice, and
`multihost_utils.reached_preemption_sync_point(step)` makes every process agree on the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Context manager; `should_stop(step)` is True once a SIGTERM arrived (same step everywhere)."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def _handler(self, signum, frame):
    del frame
    logging.warning("signal %d received: will checkpoint at the next step and exit.", signum)
    self._flag.set()

  def __enter__(self) -> PreemptionWatcher:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag.is_set()
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # no preemption sync manager (e.g. not started by jax.distributed)
      return False
