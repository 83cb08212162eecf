"""Sample grids as uint8 images and PNG files."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[−1, 1] floats → uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(x: np.ndarray, *, ncols: int, pad: int = 1, min_cell: int = 32) -> np.ndarray:
  """Tiles [N,H,W,C] images in [−1,1] into one uint8 [H', W', C] grid, rows of `ncols`.

  Images smaller than `min_cell` pixels are enlarged by an integer nearest-neighbour factor so
  that 8×8 digits are visible.
  """
  x = to_uint8(x)
  n, h, w, c = x.shape
  scale = max(1, -(-min_cell // max(h, w)))
  if scale > 1:
    x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
    ] = x[i]
  return grid


def save_png(grid: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = grid[..., 0] if grid.shape[-1] == 1 else grid
  Image.fromarray(img).save(path)
