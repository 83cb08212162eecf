"""The errors a user can fix, and how the command line reports them.

`UserError` is the base of every expected error (a bad config, data not prepared, a missing or
corrupt checkpoint, missing weights, a run of non-finite losses): its message names the problem
and the fix, so `guarded` prints that message alone, as one block, and gives exit status 1. Any
other exception is a bug and keeps its traceback; `--verbose` shows the traceback of both.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any, TextIO

EXIT_STATUS = 1
HINT = "(an expected error: add --verbose to see its traceback)"


class UserError(Exception):
  """An error the user can fix; its message says what is wrong and what to do."""


def message_block(error: BaseException) -> str:
  """What the command line prints for an expected error: its type and message, then how to see
  the traceback."""
  return f"ERROR {type(error).__name__}: {str(error).strip()}\n{HINT}\n"


def guarded(fn: Callable[[], Any], *, verbose: bool = False, stream: TextIO | None = None) -> int:
  """Runs fn() and returns the process exit status: 0, or EXIT_STATUS after writing the message
  block of a UserError to `stream` (stderr). With `verbose` a UserError propagates (traceback)."""
  try:
    fn()
  except UserError as e:
    if verbose:
      raise
    (stream or sys.stderr).write(message_block(e))
    return EXIT_STATUS
  return 0


def require_tensorflow() -> None:
  """ImportError naming the `cpu` extra unless some TensorFlow distribution is installed: clu's
  summary writer and tf.data import `tensorflow`, which is not a hard requirement (a colab
  runtime has its own; pyproject.toml explains why), and the math layers never need it."""
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
      "cfg_jax needs TensorFlow and none is installed: pip install 'cfg_jax[cpu]' (from a "
      "checkout: pip install -e '.[cpu]'), which adds the CPU wheels jax[cpu] and "
      "tensorflow-cpu; any distribution that provides `import tensorflow` (tensorflow, "
      "tensorflow-cpu) will do"
    )
