"""Trains the noise-conditional classifier of classifier guidance (Dhariwal & Nichol 2021).

    python -m cfg_jax.tools.train_classifier --config=configs/digits.py --workdir=runs/digits \
        [--classifier.<key>=<value> ...] [--config.<section>.<key>=<value> ...]

Writes TensorBoard events to `<workdir>/classifier` and orbax checkpoints to
`<workdir>/classifier/checkpoints`; a second invocation resumes. The classifier settings are the
config's `classifier` section if it has one, else `classifier.default_classifier_config()`;
`--classifier.<key>=<value>` overrides either (e.g. `--classifier.num_train_steps=2000`).
The data, λ range and seed come from the config (`data`, `diffusion`, `seed`).
"""

from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cfg_jax import classifier  # noqa: E402
from cfg_jax import main as cfg_main  # noqa: E402  (registers --config, --workdir, ...)

_CLASSIFIER = config_flags.DEFINE_config_dict(
    "classifier", classifier.default_classifier_config(),
    "Classifier settings; --classifier.<key> overrides the config's classifier section.")


def overridden_keys(argv: list[str]) -> list[str]:
  """The keys of the `--classifier.<key>=...` flags in `argv` (the full command line; absl's
  `present` misses some, e.g. `--classifier.attn_resolutions=()`)."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(_CLASSIFIER.name)}\.([A-Za-z0-9_]+)")
  return list(dict.fromkeys(m.group(1) for m in map(pattern.match, argv) if m))


def merged_config(config, overrides: dict):
  """A copy of `config` whose `classifier` section is its own (or the defaults) with `overrides`
  applied; the copy is locked again."""
  merged = classifier.classifier_config(config).copy_and_resolve_references()
  with merged.unlocked():
    for key, value in overrides.items():
      merged[key] = value
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.classifier = merged
  return config.lock()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS["mode"].present:
    raise app.UsageError("--mode is a flag of cfg_jax.main, not of this tool.")
  logging.get_absl_handler().addFilter(cfg_main._QuietLibraries())
  import jax  # after flags: XLA_FLAGS / platform env are read at first use

  cfg_main.initialize_distributed()
  logging.info("JAX process %d / %d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  overrides = {k: _CLASSIFIER.value[k] for k in overridden_keys(sys.argv)}
  config = merged_config(flags.FLAGS.config, overrides)
  logging.info("Classifier settings:\n%s", config.classifier)
  classifier.train_classifier(config, flags.FLAGS.workdir)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
