"""Checkpoints through orbax; the only module of cfg_jax that imports it.

A checkpoint is a step directory under `<workdir>/checkpoints` holding the train state (params, EMA
params, optimizer state, step) and a small JSON of metadata (the config it was trained with). Every
process writes its own shards of sharded arrays; orbax commits a step atomically (a step directory
that lacks its commit marker is never listed as complete).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or does not match the model."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Saves and restores train states in `<workdir>/checkpoints` (keeps the newest `max_to_keep`)."""

  def __init__(self, workdir: str, *, max_to_keep: int | None = 3, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"no checkpoints in {self.directory}: train first with --mode=train and the same "
          "--workdir, or point --workdir at a directory that holds a 'checkpoints' folder.")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                             read_only=read_only))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, metadata: dict | None = None) -> bool:
    """Starts an (asynchronous) save of `state` at `step`; `wait()` blocks until committed."""
    args = {"state": ocp.args.StandardSave(state)}
    if metadata is not None:
      args["metadata"] = ocp.args.JsonSave(metadata)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int | None, abstract_state: Any) -> Any:
    """Restores the state at `step` (None: latest) into the shapes/shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.directory}.")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except FileNotFoundError as e:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is missing: {e}") from e
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} does not match this config's model "
          f"(was it trained with another config?): {e}") from e
    return restored["state"]

  def metadata(self, step: int) -> dict | None:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
          "metadata"]
    except Exception:  # metadata is optional; a checkpoint without it is still usable
      return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for `Checkpointer.restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
