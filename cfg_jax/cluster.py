"""Where a run is: a Cloud TPU VM (single host or pod slice), a TPU pod on GKE or a multi-task
SLURM job — the places where `jax.distributed.initialize()` configures itself — and the call."""

from __future__ import annotations

import glob
import os

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


def tpu_vm_detected() -> bool:
  return bool(glob.glob(TPU_ACCEL_DEVICES)) or tpu_pci_chips(PCI_DEVICES_DIR) > 0


def cluster_detected() -> bool:
  """A TPU VM (pod slice or single host), a TPU pod on GKE, or a multi-task SLURM job: places
  where jax.distributed.initialize() configures itself."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return True
  if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  return tpu_vm_detected()


def initialize_distributed(
  mode: str, *, coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """jax.distributed.initialize: with an explicit coordinator, or where JAX configures itself
  (mode 'on'; 'auto': on TPU pods and in multi-task SLURM jobs; 'off': never)."""
  import jax  # after absl flags: XLA_FLAGS / the platform env are read at first use

  if mode == "off":
    return
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  elif mode == "on" or cluster_detected():
    jax.distributed.initialize()
