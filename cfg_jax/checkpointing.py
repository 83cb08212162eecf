"""Checkpoints through orbax; the only module of cfg_jax that imports it.

A checkpoint is a step directory under `<workdir>/checkpoints` holding the train state (params, EMA
params, optimizer state, step) and a small JSON of metadata (the config it was trained with). Every
process writes its own shards of sharded arrays; orbax commits a step atomically (a step directory
that lacks its commit marker is never listed as complete). Training restores the whole state;
sampling and evaluation restore only the params they use (`Checkpointer.restore_fields`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cfg_jax.errors import UserError

T = TypeVar("T")


class CheckpointError(UserError, RuntimeError):
  """A checkpoint is missing, unreadable, corrupt or does not match the model."""


@jax.jit
def _leaf_sums(tree: Any) -> list[jax.Array]:
  return [
    jnp.stack([jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.abs(x.astype(jnp.float32)))])
    for x in jax.tree.leaves(tree)
  ]


def fingerprint(tree: Any) -> list[list[float]]:
  """Per-leaf (sum, sum of |x|): stored beside each checkpoint and checked on restore, so a
  corrupt checkpoint is detected instead of silently giving wrong parameters."""
  return [[float(a), float(b)] for a, b in jax.device_get(_leaf_sums(tree))]


def fingerprints_match(a: list[list[float]], b: list[list[float]]) -> bool:
  return len(a) == len(b) and bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def list_steps(workdir: str) -> list[int]:
  """The complete checkpoint steps in `<workdir>/checkpoints`, sorted ([] when there is none);
  the read-only manager it opens is closed again."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with Checkpointer(workdir, read_only=True) as ckpt:
    return sorted(ckpt.all_steps())


class Checkpointer:
  """Saves and restores train states in `<workdir>/checkpoints` (keeps the newest `max_to_keep`)."""

  def __init__(self, workdir: str, *, max_to_keep: int | None = 3, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(
        f"no checkpoints in {self.directory}: train first with --mode=train and the same "
        "--workdir, or point --workdir at a directory that holds a 'checkpoints' folder."
      )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only
      ),
    )
    self._closed = False

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, metadata: dict | None = None) -> bool:
    """Starts an (asynchronous) save of `state` at `step`; `wait()` blocks until committed.

    Refuses (CheckpointError) to write a state with non-finite values: the last good checkpoint
    is never followed by, or replaced with, NaN parameters. orbax writes into a temporary
    directory and renames it when complete, so a crash mid-write leaves no step behind.
    """
    fp = fingerprint(state)
    if not np.all(np.isfinite(fp)):
      kept = self.latest_step()
      raise CheckpointError(
        f"refusing to checkpoint step {step}: the state holds NaN or Inf values; "
        + (
          "no earlier checkpoint exists."
          if kept is None
          else f"the last good checkpoint (step {kept}) is kept."
        )
      )
    meta = dict(metadata or {}, fingerprint=fp)
    return self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(meta)),
      force=True,
    )

  def restore(self, step: int | None, abstract_state: Any) -> Any:
    """Restores the state at `step` (None: latest) into the shapes/shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.directory}.")
    state = _read_state(
      self._manager, step, ocp.args.StandardRestore(abstract_state), where=self.directory
    )
    if not fingerprints_match(fingerprint(state), self._fingerprint(step)):
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory} is corrupt: its arrays "
        "do not match the fingerprint written with them."
      )
    return state

  def restore_fields(
    self, step: int, abstract_state: Any, fields: tuple[str, ...]
  ) -> dict[str, Any]:
    """Restores only the top-level `fields` (e.g. ('ema_params',)) of the state saved at `step`,
    into the shapes and shardings they have in `abstract_state` (the whole state the checkpoint
    was saved from, e.g. from jax.eval_shape): the other leaves, such as the optimizer state,
    are never read. The restored leaves are checked against their entries of the fingerprint."""
    target = {f: _field(abstract_state, f) for f in fields}
    args = ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True,
    )
    # A manager of its own: one that saved this item with StandardSave refuses PyTreeRestore.
    reader = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False)
    )
    try:
      restored = _read_state(reader, step, args, where=self.directory)
    finally:
      reader.close()
    missing = [
      jax.tree_util.keystr(p)
      for p, x in jax.tree.leaves_with_path(restored)
      if isinstance(x, jax.ShapeDtypeStruct)
    ]  # partial restore leaves these as given
    if missing:
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory} lacks {len(missing)} "
        f"arrays of this config's state, e.g. {missing[0]}: trained with "
        "another config?"
      )
    expected = self._fingerprint(step)
    paths = [p for p, _ in jax.tree.leaves_with_path(abstract_state)]
    if len(expected) != len(paths):
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory} holds {len(expected)} arrays, this "
        f"config's state {len(paths)}: trained with another config?"
      )
    for f in fields:
      entries = [expected[i] for i, p in enumerate(paths) if _key_name(p[0]) == f]
      if not fingerprints_match(fingerprint(restored[f]), entries):
        raise CheckpointError(
          f"checkpoint step {step} in {self.directory} is corrupt: its "
          f"'{f}' arrays do not match the fingerprint written with them."
        )
    return restored

  def _fingerprint(self, step: int) -> list[list[float]]:
    meta = self.metadata(step)
    if meta is None or "fingerprint" not in meta:
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory} has no metadata "
        "fingerprint: it is incomplete or was not written by cfg_jax."
      )
    return meta["fingerprint"]

  def restore_newest(
    self, read: Callable[[int], T], *, setting: str | None = None
  ) -> tuple[T, int] | None:
    """(read(step), step) for the newest step that `read` restores intact. Each newer step whose
    `read` raises CheckpointError (corrupt, unreadable) is skipped with a warning, and the step
    used is then named, with `setting` (the config field that picks a step) when given. None when
    there is no checkpoint; CheckpointError when none can be restored. Training, sampling,
    evaluation and the classifier loader all fall back through here."""
    skipped = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        value = read(step)
      except CheckpointError as e:
        logging.warning("%s", e)
        skipped.append(str(e))
        continue
      if skipped:
        logging.warning(
          "Using checkpoint step %d, the newest intact one in %s%s.",
          step,
          self.directory,
          f" (--config.{setting}=<step> picks another)" if setting else "",
        )
      return value, step
    if skipped:
      raise CheckpointError(
        f"no checkpoint in {self.directory} could be restored:\n  "
        + "\n  ".join(skipped)
        + "\nMove the directory away to start afresh."
      )
    return None

  def restore_latest_valid(self, abstract_state: Any) -> Any | None:
    """The newest checkpoint that reads back intact (`restore_newest`) as `abstract_state`;
    None if there is none."""
    restored = self.restore_newest(lambda step: self.restore(step, abstract_state))
    return None if restored is None else restored[0]

  def restore_or(self, state: Any, *, what: str = "") -> Any:
    """Resume-or-start: the newest intact checkpoint restored into `state`'s shapes and
    shardings, or `state` itself when there is none. Logs the step it resumes from."""
    restored = self.restore_latest_valid(abstract_like(state))
    if restored is None:
      return state
    logging.info(
      "%sResumed from checkpoint step %d.", f"{what}: " if what else "", int(restored.step)
    )
    return restored

  def metadata(self, step: int) -> dict | None:
    """The JSON written beside step `step`; None when the step has none or it is not a JSON
    object (not written by cfg_jax). A file that cannot be read is a CheckpointError, so an I/O
    fault is never mistaken for a foreign checkpoint."""
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
        "metadata"
      ]
    except KeyError:  # orbax: the step has no 'metadata' item
      return None
    except (json.JSONDecodeError, UnicodeDecodeError):  # not JSON text
      return None
    except OSError as e:
      where = getattr(e, "filename", None) or os.path.join(self.directory, str(step), "metadata")
      raise CheckpointError(
        f"cannot read the metadata of checkpoint step {step} at {where}: {type(e).__name__}: {e}"
      ) from e
    return meta if isinstance(meta, dict) else None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight to commit, then closes the manager (again: a no-op)."""
    if self._closed:
      return
    self._closed = True
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _read_state(manager: ocp.CheckpointManager, step: int, args: Any, *, where: str) -> Any:
  """The 'state' item of `step`, restored with `args`; orbax's errors as CheckpointError."""
  try:
    return manager.restore(step, args=ocp.args.Composite(state=args))["state"]
  except FileNotFoundError as e:
    raise CheckpointError(f"checkpoint step {step} in {where} is missing: {e}") from e
  except Exception as e:  # orbax / tensorstore raise many types for unreadable data
    raise CheckpointError(
      f"checkpoint step {step} in {where} cannot be read into this config's train "
      f"state (corrupt, or trained with another config?): {_first_line(e)}"
    ) from e


def _first_line(e: BaseException, limit: int = 200) -> str:
  """`Type: message` of an orbax / TensorStore error, cut to its first line and `limit`
  characters (the rest is a spec dump; --verbose shows it all)."""
  lines = str(e).strip().splitlines()
  text = f"{type(e).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= limit else text[:limit] + " …"


def _key_name(key: Any) -> Any:
  """The name of a pytree key: a dataclass field (GetAttrKey) or a dict key (DictKey)."""
  return getattr(key, "name", getattr(key, "key", None))


def _field(tree: Any, name: str) -> Any:
  return tree[name] if isinstance(tree, dict) else getattr(tree, name)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for `Checkpointer.restore`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )
