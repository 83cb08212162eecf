"""Data layer: the offline `cfg_digits` TFDS dataset and input pipelines.

docs/data.md describes the batch format, the determinism and resume guarantees, and
the digits dataset and its split.
"""

from cfg_jax.data.digits import CfgDigits, ensure_digits
from cfg_jax.data.pipeline import (
  VALID_NAMES,
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
