"""Memory guards: a step whose memory can be predicted stops before it starts, with the batch field
to lower, instead of being killed by the kernel's OOM killer with no message.

On CPU the prediction is measured peak RSS, not XLA's `memory_analysis()` (which leaves out the
convolution scratch of the CPU runtime: 4-5x too optimistic for Inception); the figures below come
from `python -m benchmarks.memory` (docs/memory.md). On accelerators the TPU plan uses the
compiler's own buffer assignment (--mode=plan).
"""

from __future__ import annotations

import jax

from cfg_jax.errors import UserError

MiB = 2**20
# Peak RSS of one jitted Inception feature call on CPU (299x299 in the graph): a fixed part and
# ~33 MiB per image, the fit of benchmarks/memory.py's probes at batch 25 / 50 / 100
# (1.34 / 2.14 / 3.75 GiB: 555 MiB + 32.8 MiB per image).
INCEPTION_FIXED_BYTES = 555 * MiB
INCEPTION_BYTES_PER_IMAGE = 33 * MiB
HEADROOM = 0.9  # use at most this fraction of the available memory


class MemoryPlanError(UserError, MemoryError):
  """A step would not fit the memory of this machine; the message names the field to lower."""


def available_bytes() -> int | None:
  """MemAvailable of this machine (Linux /proc/meminfo), or None where it cannot be read."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def inception_bytes(batch: int) -> int:
  """Predicted peak bytes of the Inception feature step at `batch` images on CPU."""
  return INCEPTION_FIXED_BYTES + batch * INCEPTION_BYTES_PER_IMAGE


def check_fits(
  needed: int,
  *,
  what: str,
  field: str,
  per_unit: int,
  current: int,
  available: int | None = None,
  backend: str | None = None,
) -> None:
  """MemoryPlanError when `needed` bytes (a CPU prediction; other backends are not checked here)
  exceed HEADROOM of the available memory: names `what`, the bytes, and the largest value of
  `field` (now `current`, each unit costing `per_unit` bytes) that fits."""
  if (backend or jax.default_backend()) != "cpu":
    return
  available = available_bytes() if available is None else available
  if available is None or needed <= HEADROOM * available:
    return
  fits = max(1, int((HEADROOM * available - (needed - current * per_unit)) // per_unit))
  raise MemoryPlanError(
    f"{what} needs about {needed / 2**30:.1f} GiB (measured on CPU: "
    f"{per_unit / MiB:.0f} MiB per unit of {field}) but this machine has "
    f"{available / 2**30:.1f} GiB available: set --config.{field}={fits} (or lower), or free "
    "memory."
  )
