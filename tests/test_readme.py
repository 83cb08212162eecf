"""What the README and docs/ promise: the README's parameter table and two commands (and .ci/run
calling the test one), its size, links that lead somewhere, the config docstrings' launch commands,
the bad-inputs doc, the benchmarks' invocation and docs/architecture.md's module tree."""

import glob
import os
import re

import pytest

from benchmarks import param_counts
from tests.helpers import REPO

README_MAX_BYTES = 20_000  # a front page; the rest is in docs/
# The pages whose relative links and anchors must lead somewhere.
LINKED_DOCS = ["README.md", "launch/README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO))]
# Every page that shows how to run a benchmark: the README, docs/, launch/ and the results files.
COMMAND_DOCS = LINKED_DOCS + sorted(glob.glob("benchmarks/results/*.md", root_dir=REPO))


def _read(path: str) -> str:
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def _readme():
  return _read("README.md")


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


def test_demo_writes_what_the_readme_says():
  """`make demo` trains configs/digits.py for 1,500 steps into runs/digits and writes the grids
  of w = 0, 1, 3 under the names the README gives."""
  from cfg_jax import config_lib

  readme = _readme()
  assert "runs/digits/samples/step_00001500_w{0,1,3}.png" in readme
  assert re.search(r"^WORKDIR \?= runs/digits$", _read("Makefile"), re.M)
  config = config_lib.load_config(os.path.join(REPO, "configs", "digits.py"))
  assert config.training.num_train_steps == 1500 and "for 1,500 steps" in readme
  assert tuple(config.guidance.w_values) == (0.0, 1.0, 3.0)


def test_readme_is_a_front_page():
  size = os.path.getsize(os.path.join(REPO, "README.md"))
  assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes: move detail into docs/"


def _prose(markdown: str) -> list[str]:
  """The lines of `markdown` outside fenced code blocks, with inline code spans emptied."""
  lines, fenced = [], False
  for line in markdown.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    if not fenced:
      lines.append(re.sub(r"`[^`]*`", "``", line))
  return lines


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: its text (code spans and links as their text), lower case,
  without punctuation other than - and _, spaces as hyphens."""
  text = re.sub(r"`([^`]*)`", r"\1", heading)
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
  """The anchors of the headings of markdown file `path` (repeats get -1, -2, ... as on GitHub)."""
  seen, anchors, fenced = {}, set(), False
  for line in _read(path).splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
    m = None if fenced else re.match(r"#{1,6} (.*?)#*\s*$", line)
    if m:
      slug = _slug(m.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      anchors.add(slug if n == 0 else f"{slug}-{n}")
  return anchors


def _links(path: str) -> list[str]:
  """The targets of the markdown links and images of `path`, outside code."""
  pattern = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
  return [m.group(1) for line in _prose(_read(path)) for m in pattern.finditer(line)]


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_and_anchors_lead_somewhere(doc):
  broken = []
  for target in _links(doc):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not checked here
      continue
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
    if not os.path.exists(os.path.join(REPO, resolved)):
      broken.append(f"{target}: no file {resolved}")
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      broken.append(f"{target}: no heading of {resolved} has the anchor #{anchor}")
  assert not broken, f"{doc}: " + "; ".join(broken)


def test_no_doc_runs_a_benchmark_as_a_script():
  """Benchmarks run as `python -m benchmarks.<name>` from the repository root."""
  old = {doc for doc in COMMAND_DOCS if re.search(r"python3? benchmarks/", _read(doc))}
  assert not old, f"use python -m benchmarks.<name> in {sorted(old)}"


def _tree_modules(markdown: str) -> set[str]:
  """The .py files of the `cfg_jax/` tree (a fenced block, two spaces of indent per level)."""
  block = re.search(r"```\n(cfg_jax/\n.*?)```", markdown, re.S).group(1)
  stack, files = [], set()
  for line in block.splitlines():
    name = line.split()[0]
    level = (len(line) - len(line.lstrip(" "))) // 2
    del stack[level:]
    if name.endswith("/"):
      stack.append(name.rstrip("/"))
    else:
      files.add("/".join([*stack, name]))
  return files


def test_architecture_tree_has_one_line_per_module():
  on_disk = {
    os.path.relpath(os.path.join(root, f), REPO)
    for root, _, names in os.walk(os.path.join(REPO, "cfg_jax"))
    for f in names
    if f.endswith(".py")
  }
  listed = _tree_modules(_read("docs/architecture.md"))
  assert listed == on_disk, (
    f"docs/architecture.md's tree lacks {sorted(on_disk - listed)} and lists "
    f"{sorted(listed - on_disk)}, which do not exist"
  )


def test_config_docstrings_hold_launch_commands():
  for name in (
    "digits",
    "mnist",
    "cifar10",
    "imagenet64",
    "imagenet128",
    "digits_dit",
    "mnist_dit",
    "imagenet64_dit",
  ):
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
