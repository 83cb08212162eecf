"""Tries each kind of bad input and records what the command line prints: docs/bad_inputs.md.

    python -m cfg_jax.tools.bad_inputs > docs/bad_inputs.md

A config typo runs `python -m cfg_jax.main` itself (it fails while the flags are parsed); the
other cases call the check that fires, through the same `errors.guarded` that the command line
wraps every mode in, and record its exit status and message block. Nothing here compiles a
model. The test suite regenerates this table, compares it with the committed one, and checks
that every row exits with status 1 and prints no traceback.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from cfg_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digits_config(**overrides):
  from cfg_jax import config_lib

  c = config_lib.load_config(os.path.join(REPO, "configs", "digits.py"))
  with c.unlocked():
    for key, value in overrides.items():
      section, _, field = key.partition(".")
      c[section][field] = value
  return c


def _validate(**overrides):
  from cfg_jax import validation

  validation.validate(_digits_config(**overrides), num_devices=8)


def _cli(tmp: str, *args: str) -> tuple[int, str]:
  """(exit status, stderr) of `python -m cfg_jax.main --config=configs/digits.py *args`."""
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "cfg_jax.main",
      f"--config={os.path.join(REPO, 'configs', 'digits.py')}",
      f"--workdir={os.path.join(tmp, 'cli')}",
      *args,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  return proc.returncode, proc.stderr


def cases(tmp: str) -> list[tuple[str, Callable[[], None]]]:
  """(bad input, a call that hits it), or (bad input, a `_cli` result) for the typo."""
  from cfg_jax import checkpointing, data, sharding, train_loop, train_state
  from cfg_jax.data import pipeline, sources
  from cfg_jax.evaluation import inception

  good = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": np.zeros((4,), np.int32)}
  spec = data.dataset_spec(ml_collections.ConfigDict({"name": "digits"}))

  def corrupt_checkpoint():
    ckpt = checkpointing.Checkpointer(os.path.join(tmp, "corrupt"))
    ckpt.save(5, {"w": jnp.ones(3)})
    ckpt.wait()
    for root, _, files in os.walk(ckpt.directory):
      for f in files:
        if "/d/" in os.path.join(root, f):
          with open(os.path.join(root, f), "r+b") as fh:
            fh.seek(os.path.getsize(os.path.join(root, f)) // 2)
            fh.write(b"\xff" * 8)
    try:
      ckpt.restore_latest_valid({"w": jnp.zeros(3)})
    finally:
      ckpt.close()

  def nan_checkpoint():
    ckpt = checkpointing.Checkpointer(os.path.join(tmp, "nan"))
    try:
      ckpt.save(1, {"w": jnp.full(3, jnp.nan)})
    finally:
      ckpt.close()

  def nonfinite_streak():
    ckpt = checkpointing.Checkpointer(os.path.join(tmp, "nonfinite"))
    ckpt.save(200, {"w": jnp.ones(3)})
    ckpt.wait()
    loop = train_loop.LoopConfig(
      num_steps=1500,
      batch_size=64,
      log_every=100,
      checkpoint_every=500,
      max_consecutive_nonfinite=100,
    )
    try:
      train_loop.check_nonfinite_streak(
        types.SimpleNamespace(step=300, nonfinite_streak=100), loop, ckpt
      )
    finally:
      ckpt.close()

  def pickled_weights():
    path = os.path.join(tmp, "pickled.npz")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.replace(path + ".npy", path)
    inception.load_params(path)

  return [
    (
      "unknown config key (`--config.training.bacth_size=3`)",
      _cli(tmp, "--config.training.bacth_size=3"),
    ),
    ("λ_min ≥ λ_max", lambda: _validate(**{"diffusion.logsnr_min": 20.0})),
    ("p_uncond outside [0, 1]", lambda: _validate(**{"guidance.p_uncond": 1.5})),
    ("w below −1 or NaN", lambda: _validate(**{"guidance.w_values": (0.0, -2.0)})),
    (
      "image size the U-Net cannot halve (8×8 digits, five levels)",
      lambda: _validate(**{"model.ch_mult": (1, 2, 2, 2, 2)}),
    ),
    (
      "attention at a resolution the U-Net lacks",
      lambda: _validate(**{"model.attn_resolutions": (3,)}),
    ),
    ("batch size not divisible by the devices", lambda: _validate(**{"training.batch_size": 12})),
    (
      "fsdp size that does not divide the devices (`--config.mesh.fsdp=3` on 8)",
      lambda: _validate(**{"mesh.fsdp": 3}),
    ),
    (
      "image_size ≠ the dataset's (`--config.data.image_size=7`)",
      lambda: _validate(**{"data.image_size": 7}),
    ),
    ("num_classes ≠ the dataset's", lambda: _validate(**{"data.num_classes": 12})),
    ("sample labels out of range", lambda: _validate(**{"sampling.labels": (3, 10)})),
    ("sampler variance v outside [0, 1]", lambda: _validate(**{"sampling.v": 2.0})),
    ("unknown dataset (`--config.data.name=svhn`)", lambda: _validate(**{"data.name": "svhn"})),
    (
      "dataset not prepared locally (cifar10)",
      lambda: sources.check_available(
        ml_collections.ConfigDict({"name": "cifar10", "data_dir": os.path.join(tmp, "tfds")})
      ),
    ),
    (
      "batch with the wrong image shape",
      lambda: pipeline.validate_batch(
        {**good, "image": np.zeros((4, 28, 28, 1), np.float32)}, spec
      ),
    ),
    (
      "batch with pixels outside [−1, 1]",
      lambda: pipeline.validate_batch({**good, "image": good["image"] + 255.0}, spec),
    ),
    (
      "batch with labels out of range",
      lambda: pipeline.validate_batch({**good, "label": np.full((4,), 10, np.int32)}, spec),
    ),
    ("missing Inception weights", lambda: inception.load_params(os.path.join(tmp, "none.npz"))),
    ("pickled weight file", pickled_weights),
    (
      "`--mode=sample` with no checkpoint",
      lambda: train_state.restore_params(
        _digits_config(), os.path.join(tmp, "empty"), sharding.make_mesh(1)
      ),
    ),
    ("corrupt checkpoint (the only one)", corrupt_checkpoint),
    ("saving a state with NaN", nan_checkpoint),
    ("100 non-finite losses in a row", nonfinite_streak),
  ]


@dataclasses.dataclass(frozen=True)
class Row:
  bad_input: str
  status: int  # the exit status the command line gives
  output: str  # what it prints (stderr), temporary paths as <tmp>


def rows() -> list[Row]:
  """Runs every case and records its exit status and printed message block."""
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, case in cases(tmp):
      if callable(case):
        buf = io.StringIO()
        status, text = errors.guarded(case, stream=buf), buf.getvalue()
      else:
        status, text = case
      text = text.replace(tmp, "<tmp>").replace(os.path.expanduser("~"), "~")
      out.append(Row(name, status, text))
  return out


def table(results: list[Row]) -> str:
  """The markdown table of `results`: the error type and its message, without the hint line."""
  lines = ["| bad input | exit status | error | message |", "|---|---|---|---|"]
  for r in results:
    m = re.match(r"ERROR (\w+): (.*)", r.output.replace(errors.HINT, ""), re.DOTALL)
    kind, message = (m.group(1), m.group(2)) if m else ("—", r.output or "(no error)")
    message = " ".join(message.split())
    if len(message) > 500:
      message = message[:500] + " …"
    lines.append(
      f"| {r.bad_input} | {r.status} | `{kind}` | {message.replace('|', chr(92) + '|')} |"
    )
  return "\n".join(lines)


HEADER = f"""# Bad inputs and the messages they get

Generated by `python -m cfg_jax.tools.bad_inputs > docs/bad_inputs.md`; a test regenerates it and
compares, and checks that each row exits with status 1 and prints no traceback. Each of these fires
before anything is compiled (the non-finite streak at a logging step), and none of them deletes or
overwrites a saved checkpoint. The command line prints each as one block, `ERROR <error>:
<message>`, then the line
`{errors.HINT}`;
`--verbose` adds the traceback. Any other exception is a bug and prints its traceback. Non-finite
losses are skipped and counted (`train/nonfinite`); after `training.max_consecutive_nonfinite` in a
row training stops.

"""


if __name__ == "__main__":
  import logging

  logging.disable(logging.WARNING)
  sys.stdout.write(HEADER + table(rows()) + "\n")
