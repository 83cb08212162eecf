"""The metric writer of every job: TensorBoard events, from process 0 only, and nothing on the
console (the training loop logs one line per window and the jobs log their own results)."""

from __future__ import annotations

import jax

from cfg_jax import errors

errors.require_tensorflow()  # clu imports it; say which extra provides it before clu fails

from clu import metric_writers  # noqa: E402


def create_writer(logdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events in `logdir` on process 0; a writer that drops everything elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.SummaryWriter(logdir)
