"""cfg_jax command line: train, sample from a checkpoint, or evaluate checkpoints over a w sweep.

    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits            # train
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=sample \
        --config.sampling.w_values='(0.,1.,3.)' --config.sampling.num_samples=100
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=evaluate
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=train_classifier
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/digits --mode=likelihood
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/distill --mode=distill \
        --config.distill.teacher_workdir=runs/digits
    python -m cfg_jax.main --config=configs/digits.py --workdir=runs/distill --mode=evaluate \
        --config.distill.student=round_3
    python -m cfg_jax.main --config=configs/digits.py --mode=show_config   # every field, with help

Any config field can be overridden with --config.<section>.<key>=<value>; unknown keys are errors.
Expected errors print their message alone and exit with status 1 (`errors.guarded`; --verbose
adds the traceback).
"""

from __future__ import annotations

import functools
import glob
import logging as std_logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cfg_jax import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/digits.py (or configs/imagenet64.py:p_uncond=0.2).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints, TensorBoard events and samples (every mode but show_config).",
)
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "sample", "evaluate", "train_classifier", "likelihood", "distill", "show_config"],
  "What to run (train_classifier: the noise-conditional classifier of "
  "classifier guidance, in <workdir>/classifier; likelihood: bits/dim of the eval split under "
  "the probability-flow ODE, in <workdir>/likelihood; distill: guided and progressive "
  "distillation of distill.teacher_workdir's model into <workdir>/stage1, round_1, ...; show_config: print every config field "
  "with its value and help, and exit).",
)
_VERBOSE = flags.DEFINE_bool(
  "verbose",
  False,
  "Print the traceback of expected errors too (bad config, missing or corrupt checkpoint, ...); "
  "without it they print their message alone.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs outside TPU pods and SLURM: host:port of "
  "process 0 (with --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "jax.distributed.initialize(): 'auto' calls it with the flags above, in a multi-task SLURM job "
  "and on TPU VMs (it finds the pod's workers itself; a single host is a 1-process cluster); "
  "'on' always (any cluster JAX auto-detects, e.g. Open MPI); 'off' never.",
)
flags.mark_flags_as_required(["config"])


# A Cloud TPU VM is recognised by its chips, as jax itself does (it then finds the pod's workers
# through the GCE metadata server): TPU PCI devices of Google's vendor id, or the TPU driver's
# /dev/accel0... of v2-v4. Not by /dev/vfio/*: v5e and later chips are reached through VFIO, but
# so is any device passed through to a VM (a GPU, a NIC).
GOOGLE_PCI_VENDOR = "0x1ae0"
# jax's table of Cloud TPU chips (v3, v4, v5p, v5e, v6e, TPU7x and one with no public name);
# Google's vendor id alone also covers a GCE VM's virtual NIC and disks.
TPU_PCI_DEVICE_IDS = frozenset(
  {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
)
PCI_DEVICES_DIR = "/sys/bus/pci/devices"
TPU_ACCEL_DEVICES = "/dev/accel[0-9]*"  # not /dev/accel/accel0 (the kernel's accel subsystem)


def _read_id(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip().lower()
  except OSError:
    return ""


def tpu_pci_chips(pci_devices_dir: str) -> int:
  """Number of Cloud TPU chips among the PCI devices under `pci_devices_dir` (sysfs layout)."""
  return sum(
    _read_id(os.path.join(d, "vendor")) == GOOGLE_PCI_VENDOR
    and _read_id(os.path.join(d, "device")) in TPU_PCI_DEVICE_IDS
    for d in glob.glob(os.path.join(pci_devices_dir, "*"))
  )


def _tpu_vm_detected() -> bool:
  return bool(glob.glob(TPU_ACCEL_DEVICES)) or tpu_pci_chips(PCI_DEVICES_DIR) > 0


def _cluster_detected() -> bool:
  """A TPU VM (pod slice or single host), a TPU pod on GKE, or a multi-task SLURM job: places
  where jax.distributed.initialize() configures itself."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return True
  if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  return _tpu_vm_detected()


def initialize_distributed() -> None:
  """jax.distributed.initialize: explicit flags, or auto-detected on TPU pods and SLURM."""
  import jax

  if _DISTRIBUTED.value == "off":
    return
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(
      _COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
    )
  elif _DISTRIBUTED.value == "on" or _cluster_detected():
    jax.distributed.initialize()


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / tfds / XLA start-up (warnings and errors still show), and
  orbax's warnings that a checkpoint directory is read only: sampling and evaluation open it
  read-only on purpose, and the notice reads like a permissions problem."""

  NOISY = ("orbax", "tensorflow_datasets", "xla_bridge", "etils")
  ORBAX_READ_ONLY = re.compile(r"read.only", re.IGNORECASE)

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "orbax" in record.pathname and self.ORBAX_READ_ONLY.search(record.getMessage()):
      return False
    return record.levelno >= std_logging.WARNING or not any(
      n in record.pathname for n in self.NOISY
    )


def run_mode(mode: str, config, workdir: str) -> None:
  """Runs `mode` (a --mode value) on `config` and `workdir`."""
  import jax  # after flags: XLA_FLAGS / platform env are read at first use

  initialize_distributed()
  logging.info(
    "JAX process %d / %d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  if mode == "train":
    from cfg_jax import train

    train.train_and_evaluate(config, workdir)
  elif mode == "sample":
    from cfg_jax import sample

    sample.sample_from_checkpoint(config, workdir)
  elif mode == "evaluate":
    from cfg_jax import evaluate

    evaluate.evaluate(config, workdir)
  elif mode == "likelihood":
    from cfg_jax import likelihood_eval

    likelihood_eval.evaluate_likelihood(config, workdir)
  elif mode == "distill":
    from cfg_jax import distill

    distill.distill(config, workdir)
  else:
    from cfg_jax import classifier

    classifier.train_classifier(config, workdir)


def log_config_changes(config, config_path: str) -> None:
  """One line: the fields of `config` that differ from configs/default.py (the full config goes to
  the workdir and TensorBoard; --mode=show_config prints it with help)."""
  from cfg_jax import config_lib

  default_path = config_lib.default_config_path(config_path)
  if not os.path.exists(default_path):
    return
  changed = config_lib.changed_fields(config, config_lib.read_config(default_path))
  logging.info(
    "Config %s: %s",
    config_path,
    "as configs/default.py"
    if not changed
    else "differs from configs/default.py in "
    + ", ".join(f"{k}={v!r}" for k, v in changed.items()),
  )


def show_config(config, config_path: str) -> None:
  """Prints every field of `config` with its value and the help of configs/default.py."""
  from cfg_jax import config_lib

  default_path = config_lib.default_config_path(config_path)
  if not os.path.exists(default_path):
    raise config_lib.ConfigError(
      f"--mode=show_config reads the fields' help from configs/default.py beside the config "
      f"file, and there is none at {default_path}."
    )
  sys.stdout.write(config_lib.describe(config, default_path=default_path))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, config_path = _CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"])
  if _MODE.value == "show_config":
    return errors.guarded(lambda: show_config(config, config_path), verbose=_VERBOSE.value)
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir.")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  log_config_changes(config, config_path)
  run = functools.partial(run_mode, _MODE.value, config, _WORKDIR.value)
  return errors.guarded(run, verbose=_VERBOSE.value)


def config_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the --config value, the paths of the --config.<path> overrides) in `argv`."""
  spec, paths = None, []
  for i, a in enumerate(argv):
    if m := re.match(r"^--?config(=(.*))?$", a):
      spec = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    elif m := re.match(r"^--?(no)?config\.([^=]+)", a):
      paths.append(m.group(2))
  return spec, paths


def unknown_overrides(argv: list[str]) -> list[str]:
  """The message of every --config.<path> override in `argv` naming no field of the config."""
  from cfg_jax import config_lib

  spec, paths = config_overrides(argv)
  if spec is None:
    return []
  path, _, arg = spec.partition(":")
  config = config_lib.read_config(path, arg or None)
  return [m for p in paths if (m := config_lib.unknown_field(config, p))]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of a config field that does not exist reported as a
  ConfigError naming the field's section and the closest field (ml_collections raises an
  escaped AttributeError that names neither)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    problems = unknown_overrides(argv)
    if not problems or "--verbose" in argv:
      raise
  from cfg_jax import config_lib

  sys.stderr.write(errors.message_block(config_lib.ConfigError("\n".join(problems))))
  sys.exit(errors.EXIT_STATUS)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
