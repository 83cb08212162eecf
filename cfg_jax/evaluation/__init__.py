"""Evaluation: sample-quality metrics (FID, Inception score, precision/recall) on features.

See :mod:`cfg_jax.evaluation.metrics` for the protocol each metric follows.
"""

from cfg_jax.evaluation.metrics import (
  feature_statistics,
  frechet_distance,
  inception_score,
  precision_recall,
  sqrt_trace_product,
)

__all__ = [
  "feature_statistics",
  "frechet_distance",
  "inception_score",
  "precision_recall",
  "sqrt_trace_product",
]
