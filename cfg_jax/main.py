"""cfg_jax command line: train, sample from a checkpoint, or evaluate checkpoints over a w sweep.

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits            # train
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=sample \
        --config.sampling.w_values='(0.,1.,3.)' --config.sampling.num_samples=100
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=evaluate

Any config field can be overridden with --config.<section>.<key>=<value>; unknown keys are errors.
"""

from __future__ import annotations

import logging as std_logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/digits.py (or configs/imagenet64.py:p_uncond=0.2).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events "
                               "and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "evaluate"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / tfds / XLA start-up (warnings and errors still show)."""
  NOISY = ("orbax", "tensorflow_datasets", "xla_bridge", "etils")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # after flags: XLA_FLAGS / platform env are read at first use

  logging.info("JAX process %d / %d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  config, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "train":
    from cfg_jax import train
    train.train_and_evaluate(config, workdir)
  elif _MODE.value == "sample":
    from cfg_jax import sample
    sample.sample_from_checkpoint(config, workdir)
  else:
    from cfg_jax import evaluate
    evaluate.evaluate(config, workdir)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
