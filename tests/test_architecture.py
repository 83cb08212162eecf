"""The package's shape: no import cycle, no library module importing a job, the math layers
importable with jax, flax and numpy alone, and no module over 450 lines without a reason."""

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

PACKAGE = os.path.join(REPO, "cfg_jax")
MATH = ["schedules", "diffusion", "guidance", "sampling", "likelihood", "toy2d", "models"]
HEAVY = ["tensorflow", "tensorflow_datasets", "clu", "orbax", "etils"]
MAX_LINES = 450


def _modules() -> dict[str, str]:
  """{'cfg_jax.x.y': path} of every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The cfg_jax modules that module `name` imports anywhere (module level or inside functions):
  `from cfg_jax.a import b` names cfg_jax.a.b when that is a module, else cfg_jax.a."""
  found = set()
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("cfg_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      if not base.startswith("cfg_jax"):
        continue
      for a in node.names:
        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
  return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle(graph):
  edges, state, stack = graph, {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(edges[m]):
      if state.get(d) == "open":
        cycle = stack[stack.index(d) :] + [d]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m)


def test_no_library_module_imports_a_job(graph):
  for m, deps in graph.items():
    if not m.startswith("cfg_jax.jobs"):
      assert not {d for d in deps if d.startswith("cfg_jax.jobs")}, (m, deps)


def test_the_math_layers_import_without_tensorflow_tfds_clu_or_orbax():
  block = "; ".join(f"sys.modules[{h!r}] = None" for h in HEAVY)
  code = (
    f"import sys; {block}; "
    + "; ".join(f"import cfg_jax.{m}" for m in MATH)
    + f"; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
    "and sys.modules[m] is not None))"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout


def test_without_tensorflow_the_jobs_name_the_extra():
  code = "import sys; sys.modules['tensorflow'] = None; import cfg_jax.jobs.train"
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 1
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "ImportError: cfg_jax needs TensorFlow and none is installed: pip install 'cfg_jax[cpu]'"
    )
  )


def test_modules_over_450_lines_say_why():
  for name, path in _modules().items():
    with open(path) as f:
      source = f.read()
    if source.count("\n") > MAX_LINES:
      doc = ast.get_docstring(ast.parse(source)) or ""
      assert "lines" in doc and "because" in doc, (
        f"{name} has {source.count(chr(10))} lines: split it, or say in its docstring why it is "
        "one module (…lines because…)"
      )


def test_main_is_a_table_of_modes():
  with open(os.path.join(PACKAGE, "main.py")) as f:
    assert f.read().count("\n") <= 150
  from cfg_jax import main

  for mode, (module, _) in main.MODES.items():
    assert os.path.exists(os.path.join(PACKAGE, "jobs", f"{module}.py")), mode
