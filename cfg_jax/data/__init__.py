"""Data: the dataset table (`specs`, no tfds), opening prepared data (`sources`), the embedded
offline datasets (`digits`, `mnist`) and the input pipelines (`pipeline`, `tfdata`).

Only the table is imported here, so that configs, models and validation read it without tfds;
jobs import `cfg_jax.data.pipeline` / `cfg_jax.data.sources`. docs/data.md describes the batch
format, the determinism and resume guarantees, and the embedded datasets and their splits.
"""

from cfg_jax.data.specs import VALID_NAMES, DatasetSpec, dataset_spec, image_shape, resolve_data_dir

__all__ = ["VALID_NAMES", "DatasetSpec", "dataset_spec", "image_shape", "resolve_data_dir"]
