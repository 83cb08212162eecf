"""Data layer: the offline `cfg_digits` TFDS dataset and input pipelines.

docs/data.md describes the batch format, the determinism and resume guarantees, and
the digits dataset and its split.
"""

from cfg_jax.data.digits import CfgDigits, ensure_digits
from cfg_jax.data.pipeline import (
  VALID_NAMES,
  BadBatchError,
  DatasetNotAvailableError,
  DatasetSpec,
  check_available,
  dataset_spec,
  eval_arrays,
  global_batch_indices,
  resolve_data_dir,
  train_iterator,
  validate_batch,
)

__all__ = [
  "CfgDigits",
  "BadBatchError",
  "DatasetNotAvailableError",
  "DatasetSpec",
  "VALID_NAMES",
  "check_available",
  "dataset_spec",
  "ensure_digits",
  "eval_arrays",
  "global_batch_indices",
  "resolve_data_dir",
  "train_iterator",
  "validate_batch",
]
