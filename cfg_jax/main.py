"""cfg_jax command line: one job per --mode, each `jobs.<mode>.run(config, workdir)`.

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits            # train
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=sample
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=evaluate
    python -m cfg_jax.main --config=configs/digits.py --mode=show_config   # every field, with help

Any config field can be overridden with --config.<section>.<key>=<value>; unknown keys are errors.
Expected errors print their message alone and exit with status 1 (`errors.guarded`; --verbose
adds the traceback). The modes and their outputs are in docs/cli.md.
"""

from __future__ import annotations

import functools
import importlib
import logging as std_logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cfg_jax import cluster, config_lib, errors  # noqa: E402

# --mode: (the job module under cfg_jax/jobs, what it does).
MODES = {
  "train": ("train", "train; resumes from the latest checkpoint of --workdir"),
  "sample": ("sample", "guided samples of a checkpoint: PNG grids and a .npz"),
  "evaluate": ("evaluate", "FID / IS / precision / recall over the guidance strength"),
  "likelihood": ("likelihood", "bits/dim of the eval split under the probability-flow ODE"),
  "distill": ("distill", "guided, then progressive distillation of distill.teacher_workdir"),
  "train_classifier": ("train_classifier", "the noisy classifier of classifier guidance"),
  "plan": ("plan", "per-chip HBM, FLOPs, step-time estimate on plan.topology (TPU compiler)"),
}

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/digits.py (or configs/imagenet64.py:p_uncond=0.2).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and outputs.")
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  [*MODES, "show_config"],
  "; ".join(f"{m}: {what}" for m, (_, what) in MODES.items())
  + "; show_config: print every config field with its value and help, and exit.",
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the traceback of expected errors too.")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs outside TPU pods and SLURM: host:port of process 0 (with --num_processes "
  "and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "jax.distributed.initialize(): 'auto' on TPU VMs and in multi-task SLURM jobs (and with "
  "--coordinator_address); 'on' always (any cluster JAX auto-detects); 'off' never.",
)
flags.mark_flags_as_required(["config"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / tfds / XLA start-up (warnings and errors still show), and
  orbax's warnings that a checkpoint directory is read only (on purpose in sample / evaluate)."""

  NOISY = ("orbax", "tensorflow_datasets", "xla_bridge", "etils")
  ORBAX_READ_ONLY = re.compile(r"read.only", re.IGNORECASE)

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "orbax" in record.pathname and self.ORBAX_READ_ONLY.search(record.getMessage()):
      return False
    return record.levelno >= std_logging.WARNING or not any(
      n in record.pathname for n in self.NOISY
    )


def run_mode(mode: str, config, workdir: str) -> None:
  """Runs the job of `mode` on `config` and `workdir` (in a cluster, after joining it)."""
  import jax  # after flags: XLA_FLAGS / platform env are read at first use

  if mode == "plan":  # compiles for compile-only TPU devices: run on the host, join no cluster
    if not os.environ.get("JAX_PLATFORMS"):
      jax.config.update("jax_platforms", "cpu")
    return importlib.import_module("cfg_jax.jobs.plan").run(config, workdir)
  try:
    cluster.initialize_distributed(
      _DISTRIBUTED.value,
      coordinator=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  logging.info(
    "JAX process %d / %d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  importlib.import_module(f"cfg_jax.jobs.{MODES[mode][0]}").run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, config_path = _CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"])
  if _MODE.value == "show_config":
    show = lambda: sys.stdout.write(config_lib.describe_file(config, config_path))
    return errors.guarded(show, verbose=_VERBOSE.value)
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir.")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.info("Config %s: %s", config_path, config_lib.changes_line(config, config_path))
  run = functools.partial(run_mode, _MODE.value, config, _WORKDIR.value)
  return errors.guarded(run, verbose=_VERBOSE.value)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of a config field that does not exist reported as a
  ConfigError naming the field's section and the closest field (ml_collections raises an
  escaped AttributeError that names neither)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    problems = config_lib.unknown_overrides(argv)
    if not problems or "--verbose" in argv:
      raise
  sys.stderr.write(errors.message_block(config_lib.ConfigError("\n".join(problems))))
  sys.exit(errors.EXIT_STATUS)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
