"""The colab demo notebook: installed as on colab into a fresh venv, then executed (tiny setting)."""

import os
import site
import subprocess
import sys

import nbformat
import pytest

from tests.helpers import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "cfg_jax_demo.ipynb")

# Run with the fresh venv's python, so that nbclient's python3 kernel is that venv's interpreter.
EXECUTE = """
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def _setup_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code")


def _outputs(nb):
  return "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )


def _env(**values):
  unset = ("CFG_JAX_REPO_DIR", "CFG_JAX_REPO_URL", "CFG_JAX_REF", "PYTHONPATH")
  env = {k: v for k, v in os.environ.items() if k not in unset}
  return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **values}


def test_setup_cell_in_a_checkout_uses_it_and_installs_nothing():
  result = subprocess.run(
    [sys.executable, "-c", _setup_cell()],
    cwd=os.path.join(REPO, "notebooks"),
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  assert f"from {os.path.join(REPO, 'cfg_jax')}\n" in result.stdout
  assert "Successfully installed" not in result.stdout


def test_setup_cell_outside_a_checkout_asks_for_the_repository_url(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", _setup_cell()], cwd=tmp_path, env=_env(), capture_output=True, text=True
  )
  assert result.returncode == 1 and not (tmp_path / "cfg_jax").exists()
  assert result.stderr.strip().splitlines()[-1] == (
    "ValueError: REPO_URL: put the repository's owner in place of OWNER, or set REPO_DIR"
  )


@pytest.mark.slow
def test_fresh_venv_installs_the_checkout_as_colab_does_and_runs_the_notebook(tmp_path):
  """Clone (committed HEAD) → `pip install` → every cell, in a venv that sees this environment's
  packages the way colab's runtime has its jax and TensorFlow preinstalled: pip adds cfg_jax only."""
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
  if head.returncode:
    pytest.skip("not a git checkout: the notebook clones the repository")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  venv_site = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  with open(os.path.join(venv_site, "preinstalled.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")  # jax, TensorFlow, pip, nbclient, ...
  before = set(os.listdir(venv_site))
  run = tmp_path / "content"  # colab's working directory: the clone goes to ./cfg_jax
  run.mkdir()
  executed = tmp_path / "executed.ipynb"
  env = _env(
    CFG_JAX_REPO_URL=REPO,
    CFG_JAX_REF=head.stdout.strip(),
    CFG_JAX_NOTEBOOK_TINY="1",
    CFG_JAX_NOTEBOOK_WORKDIR=str(tmp_path / "workdir"),
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  subprocess.run(
    [python, "-c", EXECUTE, NOTEBOOK, str(executed), str(run)], env=env, check=True, timeout=2400
  )
  added = set(os.listdir(venv_site)) - before
  assert {n for n in added if n.endswith(".dist-info")} == {"cfg_jax-0.1.0.dist-info"}, added
  nb = nbformat.read(str(executed), as_version=4)
  outputs = _outputs(nb)
  assert "Successfully installed cfg_jax-0.1.0\n" in outputs
  assert f"from {os.path.join(venv_site, 'cfg_jax')}\n" in outputs  # the installed copy
  assert "backend: cpu" in outputs and "trained steps: 20" in outputs
  assert "w=3" in outputs and "FD=" in outputs
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 3  # the sample grids, the trade-off plots and the 2D exact-score demo
