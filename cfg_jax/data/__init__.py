"""Data layer: the offline `cfg_digits` TFDS dataset and input pipelines.

docs/data.md describes the batch format, the determinism and resume guarantees, and
the digits dataset and its split.
"""

from cfg_jax.data.digits import CfgDigits
from cfg_jax.data.digits import ensure_digits
from cfg_jax.data.pipeline import check_available
from cfg_jax.data.pipeline import dataset_spec
from cfg_jax.data.pipeline import DatasetNotAvailableError
from cfg_jax.data.pipeline import DatasetSpec
from cfg_jax.data.pipeline import eval_arrays
from cfg_jax.data.pipeline import global_batch_indices
from cfg_jax.data.pipeline import resolve_data_dir
from cfg_jax.data.pipeline import train_iterator
from cfg_jax.data.pipeline import VALID_NAMES
from cfg_jax.data.pipeline import validate_batch

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
