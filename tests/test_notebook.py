"""The colab demo notebook executes top to bottom (tiny setting)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO


@pytest.mark.slow
def test_demo_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("CFG_JAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("CFG_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("CFG_JAX_REPO_DIR", REPO)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  path = os.path.join(REPO, "notebooks", "cfg_jax_demo.ipynb")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.join(REPO, "notebooks")}},
  ).execute()
  outputs = "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "trained steps: 20" in outputs
  assert "w=3" in outputs and "FD=" in outputs
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 3  # the sample grids, the trade-off plots and the 2D exact-score demo
