"""What the benchmarks share: the machine they ran on and its matmul peak, round-robin timing,
XLA's figures of a compiled function, and writing a report as JSON beside its markdown."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine() -> str:
  """One line for a report: the CPU, its cores and the load average now."""
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, load average {load}"


def versions() -> dict[str, Any]:
  """jax, flax and the backend, and torch / diffusers where installed."""
  import flax
  import jax

  out = {"jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend()}
  for name in ("torch", "diffusers"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = "not installed"
  return out


def maxrss_mib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_mib(compiled) -> dict[str, float] | None:
  """XLA's buffer assignment of a compiled function: arguments, outputs, temporaries; `peak` is
  arguments + outputs + temporaries − donated (aliased) bytes."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    return None
  if m is None:
    return None
  mib = lambda b: b / 2**20
  peak = (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  return {
    "arguments": mib(m.argument_size_in_bytes),
    "outputs": mib(m.output_size_in_bytes),
    "temporaries": mib(m.temp_size_in_bytes),
    "aliased": mib(m.alias_size_in_bytes),
    "peak": mib(peak),
  }


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of a compiled function (cost_analysis), or None."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float(ca["flops"]) if ca and "flops" in ca else None


def matmul_peak(n: int, repeats: int) -> dict[str, float]:
  """float32 matmul GFLOP/s of a jitted jnp.dot of two n×n matrices (best of `repeats`)."""
  import time

  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return {
    "n": n,
    "best_s": min(times),
    "median_s": statistics.median(times),
    "gflops": 2 * n**3 / min(times) / 1e9,
    "gflops_median": 2 * n**3 / statistics.median(times) / 1e9,
  }


def round_robin(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
  """Calls each fn once per round, in turn (A, B, C, A, B, C, ...), so a load that comes and goes
  on a shared machine hits every variant alike; each fn returns the seconds it measured."""
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      times[name].append(fn())
  return times


def summary(times: list[float]) -> dict[str, float]:
  return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}


def write_report(out: str, data: Any, markdown: str) -> None:
  """`<out>.json` (the data) and `<out>.md` (the tables), `out` a path without extension."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(data, f, indent=1, sort_keys=True, default=str)
  with open(out + ".md", "w") as f:
    f.write(markdown)


def splice(path: str, name: str, text: str) -> None:
  """Replaces what lies between the lines `<!-- name -->` and `<!-- /name -->` of the markdown
  file `path` by `text`: a table generated from results lives in one place (the results), and the
  docs show it. Raises if the markers are missing."""
  with open(path) as f:
    doc = f.read()
  begin, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
  head, sep, rest = doc.partition(begin)
  _, sep2, tail = rest.partition(end)
  if not (sep and sep2):
    raise ValueError(f"{path}: no {begin.strip()} ... {end} block")
  with open(path, "w") as f:
    f.write(head + begin + text + end + tail)


def check_paired(feats: dict) -> None:
  """Raises unless every cell of {key: saved feature arrays} holds the same labels in the same
  order (sample i of every cell then shares its noise too: both come from (seed, sample id))."""
  import numpy as np

  labels = [f["labels"] for f in feats.values()]
  if any(not np.array_equal(x, labels[0]) for x in labels):
    raise ValueError(
      "cells with different labels or sample counts cannot be paired; give all of them one "
      "--num_samples and seed."
    )


def paired_bootstrap(feats: dict, evaluator, *, rounds: int, seed: int) -> dict[str, dict]:
  """Paired-bootstrap Fréchet distances {metric: {key: [rounds]}} of every cell of
  {key: saved feature arrays} (the same resampled indices for every cell): of the dataset
  classifier's features ('fd') and, when every cell has them, Inception's ('fid')."""
  from cfg_jax.evaluation import metrics

  refs = {"fd": ("features", evaluator.ref)}
  if evaluator.fid_ref is not None and all("inception" in f for f in feats.values()):
    refs["fid"] = ("inception", evaluator.fid_ref)
  return {
    metric: metrics.bootstrap_frechet_distances(
      {k: f[array] for k, f in feats.items()}, ref["mu"], ref["sigma"], num_rounds=rounds, seed=seed
    )
    for metric, (array, ref) in refs.items()
  }
