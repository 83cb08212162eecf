"""What the README promises: its parameter table, its two commands, .ci/run calling the test one."""

import os
import re

import pytest

from benchmarks import param_counts
from tests.helpers import REPO


def _readme():
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def test_parameter_table_matches_eval_shape_counts():
  assert param_counts.table() in _readme()


def test_two_commands_and_ci():
  readme = _readme()
  block = re.search(r"```bash\n(make demo.*?)```", readme, re.S).group(1)
  assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
    "make demo",
    "make test",
  ]
  with open(os.path.join(REPO, ".ci", "run")) as f:
    assert "make test" in f.read()
  with open(os.path.join(REPO, "Makefile")) as f:
    makefile = f.read()
  assert "-m pytest" in makefile and "configs/digits.py" in makefile


def test_config_docstrings_hold_launch_commands():
  for name in ("digits", "mnist", "cifar10", "imagenet64", "imagenet128"):
    with open(os.path.join(REPO, "configs", f"{name}.py")) as f:
      assert f"python -m cfg_jax.main --config=configs/{name}.py" in f.read()


@pytest.fixture(scope="module")
def bad_input_rows():
  from cfg_jax.tools import bad_inputs

  return bad_inputs.rows()


def test_bad_inputs_doc_is_current(bad_input_rows):
  from cfg_jax.tools import bad_inputs

  with open(os.path.join(REPO, "docs", "bad_inputs.md")) as f:
    assert f.read() == bad_inputs.HEADER + bad_inputs.table(bad_input_rows) + "\n", (
      "regenerate: python -m cfg_jax.tools.bad_inputs > docs/bad_inputs.md"
    )


def test_bad_inputs_print_one_block_and_exit_1(bad_input_rows):
  """Every expected error of docs/bad_inputs.md ends the command line with status 1 and its
  message alone: one `ERROR <type>: ...` block and the hint, no traceback."""
  from cfg_jax import errors

  for row in bad_input_rows:
    assert row.status == errors.EXIT_STATUS, row
    assert "Traceback" not in row.output, row
    body = row.output.rstrip("\n")
    assert body.startswith("ERROR ") and body.endswith(errors.HINT), row
    assert body.count("ERROR ") == 1, row
