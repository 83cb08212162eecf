"""Tries each kind of bad input and records the message cfg_jax gives: docs/bad_inputs.md.

    python -m cfg_jax.tools.bad_inputs > docs/bad_inputs.md

Nothing here compiles a model: every check fires before any XLA compile. The test suite
regenerates this table and compares it with the committed one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

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
  from cfg_jax import config_lib

  config_lib.validate(_digits_config(**overrides), num_devices=8)


def cases(tmp: str) -> list[tuple[str, Callable[[], None]]]:
  from cfg_jax import checkpointing, data, sample, sharding
  from cfg_jax.evaluation import inception

  spec = data.dataset_spec(ml_collections.ConfigDict({"name": "digits"}))
  good = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": np.zeros((4,), np.int32)}

  def unknown_key():
    _digits_config().training.bacth_size = 3

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

  def pickled_weights():
    path = os.path.join(tmp, "pickled.npz")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.replace(path + ".npy", path)
    inception.load_params(path)

  return [
    ("unknown config key (`--config.training.bacth_size=3`)", unknown_key),
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
    ("unknown dataset", lambda: data.dataset_spec(ml_collections.ConfigDict({"name": "svhn"}))),
    (
      "dataset not prepared locally (cifar10)",
      lambda: data.check_available(
        ml_collections.ConfigDict({"name": "cifar10", "data_dir": os.path.join(tmp, "tfds")})
      ),
    ),
    (
      "batch with the wrong image shape",
      lambda: data.validate_batch({**good, "image": np.zeros((4, 28, 28, 1), np.float32)}, spec),
    ),
    (
      "batch with pixels outside [−1, 1]",
      lambda: data.validate_batch({**good, "image": good["image"] + 255.0}, spec),
    ),
    (
      "batch with labels out of range",
      lambda: data.validate_batch({**good, "label": np.full((4,), 10, np.int32)}, spec),
    ),
    ("missing Inception weights", lambda: inception.load_params(os.path.join(tmp, "none.npz"))),
    ("pickled weight file", pickled_weights),
    (
      "`--mode=sample` with no checkpoint",
      lambda: sample.load_params(
        _digits_config(), os.path.join(tmp, "empty"), sharding.make_mesh(1)
      ),
    ),
    ("corrupt checkpoint (the only one)", corrupt_checkpoint),
    ("saving a state with NaN", nan_checkpoint),
  ]


def table() -> str:
  rows = ["| bad input | error | message |", "|---|---|---|"]
  with tempfile.TemporaryDirectory() as tmp:
    for name, fn in cases(tmp):
      try:
        fn()
        message, kind = "(no error)", "—"
      except Exception as e:  # the point is to record what the user sees
        kind = type(e).__name__
        message = str(e).replace(tmp, "<tmp>").replace(os.path.expanduser("~"), "~")
        message = " ".join(message.split())
        if len(message) > 400:
          message = message[:400] + " …"
      message = message.replace("|", "\\|")
      rows.append(f"| {name} | `{kind}` | {message} |")
  return "\n".join(rows)


HEADER = """# Bad inputs and the messages they get

Generated by `python -m cfg_jax.tools.bad_inputs > docs/bad_inputs.md`; a test regenerates it and
compares. Each of these fires before anything is compiled, and none of them deletes or overwrites a
saved checkpoint. Non-finite losses are skipped and counted (`train/nonfinite`); after
`training.max_consecutive_nonfinite` in a row training stops with `NonFiniteLossError`.

"""


if __name__ == "__main__":
  import logging

  logging.disable(logging.WARNING)
  sys.stdout.write(HEADER + table() + "\n")
