"""What a guidance interval saves: the full T-step guided sampling loop, CIFAR-sized U-Net.

    python -m benchmarks.guidance_interval [--fraction 0.5] [--sampler ancestral] [--repeats 3]
    python -m benchmarks.guidance_interval --tiny --out /tmp/guidance_interval_tiny.json  # smoke

Three variants of the same jitted sampler (`sampling_runner.make_sampler`, random `UNet.init`
params; 32×32×3, ch 64, ch_mult (1, 2, 2), 2 res-blocks, attention at 16 and 8, head_channels 64,
batch 16, T = 32 by default):

- unguided: the conditional half only (`guided=False`), one forward of batch B per step;
- guided: the batched [z, z] forward (batch 2B) at every step;
- interval: guidance on the middle fraction f of the steps (`guidance_interval` = the λ range of
  those steps), the conditional half elsewhere, through `lax.cond` inside the loop.

If a forward costs in proportion to its batch, guided / unguided = 2 and interval / unguided =
1 + f. It prints the measured ratios next to those predictions (and next to 1 + f (r − 1), with r
the measured guided / unguided ratio, which is what the interval should cost if each step costs
what its batch size costs), and writes everything to benchmarks/results/guidance_interval.json.
Compile time is measured separately (first call); each timed run is a full sampling call ended by
`block_until_ready`, and the variants are timed round-robin so a drifting machine load hits all of
them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from benchmarks.common import REPO

FULL = dict(
  image_size=32,
  channels=3,
  ch=64,
  ch_mult=(1, 2, 2),
  num_res_blocks=2,
  attn_resolutions=(16, 8),
  head_channels=64,
  batch=16,
  num_steps=32,
  repeats=3,
)
TINY = dict(
  image_size=8,
  channels=3,
  ch=16,
  ch_mult=(1, 2),
  num_res_blocks=1,
  attn_resolutions=(4,),
  head_channels=16,
  batch=2,
  num_steps=4,
  repeats=2,
)
NUM_CLASSES = 10


def middle_interval(logsnrs, fraction: float) -> tuple[tuple[float, float], int]:
  """(λ_lo, λ_hi) spanning the middle round(f·T) grid points (at least 1), and that count."""
  t = len(logsnrs)
  k = min(t, max(1, round(fraction * t)))
  first = (t - k) // 2
  return (float(logsnrs[first]), float(logsnrs[first + k - 1])), k


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="a tiny U-Net and T = 4 (smoke test)")
  parser.add_argument("--fraction", type=float, default=0.5, help="f: guided fraction of steps")
  parser.add_argument("--sampler", default="ancestral")
  parser.add_argument("--w", type=float, default=3.0)
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--num-steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument(
    "--out", default=os.path.join(REPO, "benchmarks", "results", "guidance_interval.json")
  )
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from cfg_jax import sampling, sampling_runner
  from cfg_jax.models import UNet

  s = dict(TINY if args.tiny else FULL)
  for key in ("batch", "num_steps", "repeats"):
    if getattr(args, key) is not None:
      s[key] = getattr(args, key)
  model = UNet(
    num_classes=NUM_CLASSES,
    ch=s["ch"],
    ch_mult=tuple(s["ch_mult"]),
    num_res_blocks=s["num_res_blocks"],
    attn_resolutions=tuple(s["attn_resolutions"]),
    head_channels=s["head_channels"],
  )
  shape = (s["image_size"], s["image_size"], s["channels"])
  params = jax.jit(
    lambda r: model.init(
      r, jnp.zeros((1, *shape)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), train=False
    )
  )(jax.random.key(0))["params"]
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  base = sampling.SamplerConfig(num_steps=s["num_steps"], sampler=args.sampler)
  interval, k = middle_interval(np.asarray(base.logsnrs()), args.fraction)
  f = k / s["num_steps"]
  variants = {
    "unguided": sampling.SamplerConfig(
      num_steps=s["num_steps"], sampler=args.sampler, guided=False
    ),
    "guided": base,
    "interval": sampling.SamplerConfig(
      num_steps=s["num_steps"], sampler=args.sampler, guidance_interval=interval
    ),
  }
  b = s["batch"]
  call = (
    jax.random.key(1),
    jnp.arange(b, dtype=jnp.int32),
    jnp.arange(b, dtype=jnp.int32) % NUM_CLASSES,
    jnp.full((b,), args.w, jnp.float32),
  )
  samplers, compile_s = {}, {}
  for name, config in variants.items():
    samplers[name] = sampling_runner.make_sampler(
      model.apply, shape=shape, null_label=NUM_CLASSES, config=config
    )
    start = time.perf_counter()
    jax.block_until_ready(samplers[name](params, *call))
    compile_s[name] = time.perf_counter() - start
    print(f"{name}: first call (compile + run) {compile_s[name]:.1f} s", flush=True)
  times = {name: [] for name in variants}
  for _ in range(s["repeats"]):
    for name in variants:
      start = time.perf_counter()
      jax.block_until_ready(samplers[name](params, *call))
      times[name].append(time.perf_counter() - start)

  med = {name: statistics.median(t) for name, t in times.items()}
  r_guided = med["guided"] / med["unguided"]
  predicted = {"unguided": 1.0, "guided": 2.0, "interval": 1.0 + f}
  from_measured = {"unguided": 1.0, "guided": r_guided, "interval": 1.0 + f * (r_guided - 1.0)}
  rows = []
  print(
    f"\nT={s['num_steps']}, batch {b}, sampler {args.sampler}, U-Net {num_params:,} params, "
    f"interval λ ∈ [{interval[0]:.3f}, {interval[1]:.3f}] guides {k}/{s['num_steps']} steps "
    f"(f = {f:.3f})"
  )
  print(
    f"{'variant':<10}{'evals':>7}{'guided':>8}{'median s':>10}{'/ unguided':>12}"
    f"{'predicted':>11}{'1+f(r-1)':>10}"
  )
  for name, config in variants.items():
    d = config.describe()
    ratio = med[name] / med["unguided"]
    print(
      f"{name:<10}{d['network_evals']:>7}{d['guided_evals']:>8}{med[name]:>10.3f}"
      f"{ratio:>12.3f}{predicted[name]:>11.3f}{from_measured[name]:>10.3f}"
    )
    rows.append(
      {
        "variant": name,
        "sampler_config": d,
        "compile_and_first_run_s": compile_s[name],
        "run_s": times[name],
        "median_s": med[name],
        "ratio_to_unguided": ratio,
        "predicted_ratio": predicted[name],
        "predicted_ratio_from_measured_guided": from_measured[name],
      }
    )
  result = {
    "benchmark": "guidance_interval",
    "tiny": bool(args.tiny),
    "settings": s,
    "w": args.w,
    "fraction_requested": args.fraction,
    "fraction_guided": f,
    "guidance_interval": list(interval),
    "unet_params": num_params,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()][:1],
    "platform": platform.platform(),
    "cpu_count": os.cpu_count(),
    "rows": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=2)
  print(f"\nwrote {args.out}")
  return result


if __name__ == "__main__":
  main()
