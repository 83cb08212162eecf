"""benchmarks/guidance_methods.py's tables on known data: each method's best cell, the paired
differences against CFG at w = 0 and against CFG's best, and the README's summary from the results."""

import json
import os

import numpy as np

from benchmarks import guidance_methods as bench
from tests.helpers import REPO


def _row(method: str, strength: float, fid: float) -> dict:
  field, _ = bench.method_info(method)
  return {
    field: strength,
    "step": 1200,
    "fid": fid,
    "fd": fid / 10,
    "is": 5.0,
    "fid_precision": 0.5,
    "fid_recall": 0.25,
    "class_accuracy": 0.9,
    "sampler_settings": json.dumps({"network_evals": 32, "guided_evals": method != "cfg_ddim"}),
  }


def _data(rounds: int = 64) -> dict:
  """CFG at w = 0 / 1 / 2 (best at 1) and CFG++ at l = 0.2 / 0.5 (best at 0.5): each cell's
  bootstrap rounds are a shared noise plus its FID, so every paired difference is exact."""
  noise = np.random.default_rng(0).normal(size=rounds)
  cells = {("cfg", 0.0): 30.0, ("cfg", 1.0): 20.0, ("cfg", 2.0): 25.0}
  cells |= {("cfgpp", 0.2): 28.0, ("cfgpp", 0.5): 17.0}
  results = {"cfg": {"rows": []}, "cfgpp": {"rows": []}}
  for (m, w), fid in cells.items():
    results[m]["rows"].append(_row(m, w, fid))
  boot = {f"{m}|{w:g}": (fid + noise).tolist() for (m, w), fid in cells.items()}
  return {
    "argv": ["--workdir=runs/gm/mnist", "--num_samples=300"],
    "machine": "a test",
    "seconds": 60.0,
    "results": results,
    "bootstrap": {"fid": boot, "fd": boot},
    "grids": {},
  }


def test_best_cells_and_paired_differences_are_the_known_ones():
  best = {c["name"]: c for c in bench.best_cells(_data())}
  assert best["cfg"]["strength"] == "w = 1" and best["cfgpp"]["strength"] == "l = 0.5"
  np.testing.assert_allclose(best["cfg"]["d0"], -10.0)  # the shared noise cancels exactly
  np.testing.assert_allclose(best["cfg"]["db"], 0.0)
  np.testing.assert_allclose(best["cfgpp"]["d0"], -13.0)
  np.testing.assert_allclose(best["cfgpp"]["db"], -3.0)
  assert best["cfgpp"]["per_eval"].startswith("2B") and best["cfg"]["evals"] == 32


def test_report_and_readme_table_show_the_best_cells():
  data = _data()
  text = bench.report(data)
  assert "real Inception FID" in text and "step 1200" in text and "(w = 1)" in text
  assert "| CFG++ (DDIM), over l | l = 0.5 | 17.00 ± " in text
  assert "| -13.00 ± 0.00 | -3.00 ± 0.00 | 1.00 | 0.500 | 0.250 | 0.900 | 32 × 2B" in text
  assert "| cfg | w = 2 | 25.00 ± " in text and "| -5.00 ± 0.00 | 2.50 | 5.000 |" in text
  table = bench.readme_table(data)
  assert table.splitlines()[0].startswith("| method | best strength | FID | ΔFID vs CFG w = 0")
  assert "| l = 0.5 | 17.0 | -13.0 ± 0.0 | -3.0 ± 0.0 | 0.250 | 32 × 2B" in table
  assert len(table.splitlines()) == 2 + 2  # header, rule, one row per method


def test_readme_summary_is_the_results():
  with open(os.path.join(REPO, "benchmarks", "results", "guidance_methods.json")) as f:
    data = json.load(f)
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  assert bench.readme_table(data) in readme
