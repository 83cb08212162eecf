"""Fault-injection harness: kill training at random points, restart, compare with a clean run.

    python -m cfg_jax.tools.fault_injection --faults 20 [--steps 24] [--seed 0]

Trains a tiny digits config for `--steps` steps once without interruption (the reference), then
again in another workdir, killing the training process at random moments (every third kill a SIGTERM, the others SIGKILL) —
during steps and during checkpoint writes (a checkpoint is written every step) — and restarting it
after each kill until it finishes. The final train state (params, EMA, optimizer state, step) must
equal the reference bitwise. Prints `faults tried: N, survived: M` and exits non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
  "--config.training.batch_size=16",
  "--config.training.log_every_steps=4",
  "--config.training.checkpoint_every_steps=1",
  "--config.training.grid_samples_per_class=1",
  "--config.training.sample_every_steps=0",
  "--config.sampling.num_steps=2",
  "--config.evaluation.judge_num_samples=0",
  "--config.training.warmup_steps=4",
]


def command(workdir: str, steps: int) -> list[str]:
  config = os.path.join(REPO, "configs", "digits.py")
  return [
    sys.executable,
    "-m",
    "cfg_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.training.num_train_steps={steps}",
    *TINY,
  ]


def env() -> dict[str, str]:
  return dict(
    os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", TF_CPP_MIN_LOG_LEVEL="2"
  )


def run_clean(workdir: str, steps: int) -> None:
  subprocess.run(
    command(workdir, steps),
    env=env(),
    check=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def run_with_faults(workdir: str, steps: int, faults: int, rng: random.Random, log=print) -> int:
  """Kills and restarts training `faults` times, then lets it finish; returns kills done."""
  done = 0
  while True:
    proc = subprocess.Popen(
      command(workdir, steps), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if done < faults:
      # Wait until training runs (a new checkpoint appears), then a random extra delay: the kill
      # lands in a step, in a checkpoint write, or in start-up / shutdown.
      before = checkpoint_steps(workdir)
      deadline = time.time() + 120
      while proc.poll() is None and checkpoint_steps(workdir) == before and time.time() < deadline:
        time.sleep(0.05)
      time.sleep(rng.uniform(0.0, 1.5))
      if proc.poll() is None:
        # Every third fault is a SIGTERM (preemption: save at the next step and exit 0).
        sig = signal.SIGTERM if done % 3 == 0 else signal.SIGKILL
        proc.send_signal(sig)
        code = proc.wait()
        done += 1
        log(
          f"fault {done}: {signal.Signals(sig).name}, exit code {code}, checkpoints now "
          f"{checkpoint_steps(workdir)[-3:]}"
        )
        continue
    if proc.wait() != 0:
      raise RuntimeError(f"training exited with {proc.returncode} after {done} faults")
    if checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] == steps:
      return done


def final_states_equal(workdir_a: str, workdir_b: str, steps: int) -> bool:
  """Bitwise comparison of the final train states of two workdirs."""
  import jax
  import numpy as np

  from cfg_jax import checkpointing, config_lib, sharding, train_state

  config = config_lib.load_config(os.path.join(REPO, "configs", "digits.py"))
  abstract = train_state.abstract_state(config, sharding.make_mesh(1))
  with checkpointing.Checkpointer(workdir_a, read_only=True) as ckpt:
    a = ckpt.restore(steps, abstract)
  with checkpointing.Checkpointer(workdir_b, read_only=True) as ckpt:
    b = ckpt.restore(steps, abstract)
  same = jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)
  return all(jax.tree.leaves(same))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--faults", type=int, default=20)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None, help="default: a temporary directory")
  args = parser.parse_args(argv)
  root = args.workdir or tempfile.mkdtemp(prefix="cfg_jax_faults_")
  ref, faulty = os.path.join(root, "reference"), os.path.join(root, "faulty")
  start = time.time()
  run_clean(ref, args.steps)
  kills = run_with_faults(faulty, args.steps, args.faults, random.Random(args.seed))
  equal = final_states_equal(ref, faulty, args.steps)
  print(
    f"faults tried: {kills}, survived: {kills if equal else 0} "
    f"(final state bitwise equal to the uninterrupted run: {equal}; "
    f"{args.steps} steps, {time.time() - start:.0f} s)"
  )
  return 0 if equal else 1


if __name__ == "__main__":
  sys.exit(main())
