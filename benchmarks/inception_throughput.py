"""Images/s of the Flax FID Inception-v3 feature extraction (`inception.jit_features`) on this host.

    python -m benchmarks.inception_throughput [--weights PATH] [--batch-sizes 50,100] [--rounds 3]

Times the jitted forward (TF-graph preprocessing, bilinear resize to 299×299, network, pool_3) on
8×8×1 inputs (the digits, resized in the graph) and 299×299×3 inputs, for each batch size: compile
time, then the median over `--rounds` timed calls, with XLA's FLOP count of the compiled function
and the load average (the machine may be shared). Weights: `--weights`, else the default location
(`make fid-weights`), else random weights of the same shapes (same speed).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cfg_jax.evaluation import inception


def load_or_random_params(path: str | None):
  path = inception.resolve_weights_path(path or "")
  if path is not None:
    return inception.load_params(path), path
  rng = np.random.default_rng(0)
  shapes = inception.param_shapes(with_logits=False)
  flat = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
  return traverse_util.unflatten_dict(flat, sep="/"), "random"


def time_batch(params, shape, rounds: int) -> dict:
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, shape), jnp.float32)
  start = time.perf_counter()
  compiled = jax.jit(inception.features).lower(params, x).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  jax.block_until_ready(compiled(params, x))  # warm-up
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return {
    "shape": shape,
    "compile_s": compile_s,
    "median_s": median,
    "images_per_s": shape[0] / median,
    "gflop_per_image": flops / shape[0] / 1e9,
    "gflop_per_s": flops / median / 1e9,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--weights", default=None)
  parser.add_argument("--batch-sizes", default="50,100")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  params, source = load_or_random_params(args.weights)
  print(
    f"weights: {source}; devices: {jax.devices()}; cpus: {os.cpu_count()}; "
    f"load average at start: {os.getloadavg()}"
  )
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    for size, channels in ((8, 1), (299, 3)):
      r = time_batch(params, (batch, size, size, channels), args.rounds)
      print(
        f"batch {batch:4d} of {size}x{size}x{channels}: {r['images_per_s']:6.2f} images/s "
        f"(median {r['median_s']:.2f} s over {args.rounds}), compile {r['compile_s']:.1f} s, "
        f"{r['gflop_per_image']:.2f} GFLOP/image, {r['gflop_per_s']:.1f} GFLOP/s"
      )
  print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
  main()
