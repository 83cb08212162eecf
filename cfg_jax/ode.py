"""An adaptive ODE solver for pytree states: Dormand–Prince 5(4) with error control (the RK45 of
scipy and score_sde), integrating in either direction; the likelihood's probability-flow ODE is
its user (`likelihood.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dormand–Prince 5(4) tableau (the RK45 of scipy / score_sde), first-same-as-last: row i of
# _DP_A gives stage i + 1 from stages 0..i; its last row is the 5th-order solution.
_DP_C = np.array([1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0], np.float32)
_DP_A = np.zeros((6, 7), np.float32)
for _i, _row in enumerate(
  [
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
  ]
):
  _DP_A[_i, : len(_row)] = _row
_DP_B_ERR = np.array(  # 5th-order weights minus the embedded 4th-order ones (7 stages)
  [
    35 / 384 - 5179 / 57600,
    0.0,
    500 / 1113 - 7571 / 16695,
    125 / 192 - 393 / 640,
    -2187 / 6784 + 92097 / 339200,
    11 / 84 - 187 / 2100,
    -1 / 40,
  ],
  np.float32,
)


def dopri5(
  g: Callable[[Any, jax.Array], Any],
  y0: Any,
  *,
  start: float,
  stop: float,
  rtol: float,
  atol: float,
  max_steps: int,
) -> tuple[Any, jax.Array, jax.Array]:
  """Adaptive Dormand–Prince 5(4) with error control (RMS norm of err / (atol + rtol |y|), as
  scipy's RK45), from λ = start to stop in either direction. Returns (y(stop), number of g
  evaluations, converged: reached `stop` within max_steps)."""
  direction = 1.0 if stop > start else -1.0
  span = abs(stop - start)
  # Stages are stacked on a leading axis of 7 and computed by a scan, so g is traced once.
  mix = lambda coeffs, ks: jax.tree.map(lambda k: jnp.tensordot(coeffs, k, axes=1), ks)
  axpy = lambda y, h, d: jax.tree.map(lambda yi, di: yi + h * di, y, d)

  def error_norm(y, y_new, err):
    leaves = zip(jax.tree.leaves(y), jax.tree.leaves(y_new), jax.tree.leaves(err))
    terms = [
      jnp.square(e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))).ravel()
      for a, b, e in leaves
    ]
    return jnp.sqrt(jnp.mean(jnp.concatenate(terms)))

  def step(carry):
    t, y, k1, h, n, nfe = carry
    h = jnp.minimum(h, jnp.abs(stop - t)) * direction
    ks = jax.tree.map(lambda k: jnp.zeros((7, *k.shape), k.dtype).at[0].set(k), k1)

    def stage(ks, i):
      y_i = axpy(y, h, mix(jnp.asarray(_DP_A)[i], ks))
      k = g(y_i, t + jnp.asarray(_DP_C)[i] * h)
      return jax.tree.map(lambda a, b: a.at[i + 1].set(b), ks, k), y_i

    ks, y_stages = jax.lax.scan(stage, ks, jnp.arange(6))
    y_new = jax.tree.map(lambda a: a[-1], y_stages)  # 5th order; ks[6] = g(y_new) (FSAL)
    e = error_norm(y, y_new, jax.tree.map(lambda d: h * d, mix(jnp.asarray(_DP_B_ERR), ks)))
    accept = e <= 1.0
    factor = jnp.clip(0.9 * jnp.where(e > 0, e, 1e-10) ** -0.2, 0.2, 10.0)
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(accept, u, v), a, b)
    k_last = jax.tree.map(lambda k: k[6], ks)
    t_new = jnp.where(accept, t + h, t)
    return t_new, pick(y_new, y), pick(k_last, k1), jnp.abs(h) * factor, n + 1, nfe + 6

  def not_done(carry):
    t, _, _, h, n, _ = carry
    return (direction * (stop - t) > 1e-6 * span) & (n < max_steps) & (h > 1e-12 * span)

  t0 = jnp.float32(start)
  init = (t0, y0, g(y0, t0), jnp.float32(0.05 * span), jnp.int32(0), jnp.int32(1))
  t, y, _, _, _, nfe = jax.lax.while_loop(not_done, step, init)
  return y, nfe, direction * (stop - t) <= 1e-6 * span
