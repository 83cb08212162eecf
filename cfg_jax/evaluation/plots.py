"""The trade-off plot of a sweep: FD against IS over the guidance strength (FD against the
strength itself where no IS is available), as an RGB image for TensorBoard and a PNG."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from cfg_jax.evaluation.results import guidance_strength


def tradeoff_plot(rows: list[dict[str, Any]], *, title: str, label: str = "w") -> np.ndarray:
  """FD-vs-IS curve over w (or `label`) as an RGB uint8 image (one point per value, annotated);
  FD against w itself when IS is not available (Inception weights without the classifier)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4.5, 3.5), dpi=100)  # no pyplot: leaves the caller's backend alone
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  fd = [r["fd"] for r in rows]
  has_is = all(np.isfinite(r["is"]) for r in rows)
  score = [r["is"] if has_is else guidance_strength(r) for r in rows]
  ax.plot(score, fd, "o-")
  for r, xpos in zip(rows, score):
    ax.annotate(
      f"{label}={guidance_strength(r):g}",
      (xpos, r["fd"]),
      textcoords="offset points",
      xytext=(4, 4),
      fontsize=7,
    )
  if not has_is:
    ax.set_xlabel(label)
  else:
    ax.set_xlabel(
      "IS" if rows and rows[0]["feature_net"] == "inception" else "IS (digits classifier)"
    )
  ax.set_ylabel(
    "FID" if rows and rows[0]["feature_net"] == "inception" else "FD (digits classifier)"
  )
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  from PIL import Image

  buf.seek(0)
  return np.asarray(Image.open(buf).convert("RGB"))
