"""An exact-score 2D demo of guidance: per-class mixtures of isotropic Gaussians.

E[ε | z_λ] of a Gaussian mixture is known in closed form at every λ, so `eps_fn(toy)` is an exact
ε-function for `sampling.sample` (labels in [0, K], K = ∅), computed without dividing by σ; the
formula is in docs/samplers.md.

    python -m cfg_jax.toy2d --out toy2d.png [--samples N] [--steps T] [--sampler heun]

samples each class at w = 0, 1, 3, 8 and writes a scatter plot; `make_figure` returns the figure
for a notebook cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import sampling, schedules
from cfg_jax.guidance import EpsFn


@dataclasses.dataclass(frozen=True)
class Toy2D:
  """Components m of all classes: mean [M, 2], std [M], class id [M], weight within class [M]."""

  means: np.ndarray
  stds: np.ndarray
  classes: np.ndarray
  weights: np.ndarray
  class_prior: np.ndarray  # p(c), [K]

  @property
  def num_classes(self) -> int:
    return int(self.class_prior.shape[0])

  @property
  def null_label(self) -> int:
    return self.num_classes

  def log_weights(self) -> np.ndarray:
    """[K + 1, M] log mixture weights of each label's density (row K: ∅, the class mixture)."""
    k, m = self.num_classes, self.means.shape[0]
    out = np.full((k + 1, m), -np.inf, np.float32)
    out[self.classes, np.arange(m)] = np.log(self.weights)
    out[k] = np.log(self.class_prior[self.classes] * self.weights)
    return out


def default_toy() -> Toy2D:
  """3 classes around a circle, each 2–3 well-separated tight Gaussians, inside [−1, 1]²."""
  means, classes, weights = [], [], []
  parts = {
    0: ((0.55, 0.35), (0.75, 0.0)),
    1: ((-0.55, 0.35), (-0.1, 0.72), (-0.75, -0.05)),
    2: ((-0.3, -0.65), (0.3, -0.65)),
  }
  within = {0: (0.6, 0.4), 1: (0.5, 0.3, 0.2), 2: (0.5, 0.5)}
  for c, centers in parts.items():
    means += centers
    classes += [c] * len(centers)
    weights += within[c]
  m = len(means)
  return Toy2D(
    means=np.asarray(means, np.float32),
    stds=np.full((m,), 0.07, np.float32),
    classes=np.asarray(classes, np.int32),
    weights=np.asarray(weights, np.float32),
    class_prior=np.full((3,), 1.0 / 3.0, np.float32),
  )


def log_prob(toy: Toy2D, *, z: jax.Array, logsnr: jax.Array, labels: jax.Array) -> jax.Array:
  """log p_λ(z | label) [B] of the noised mixture (labels in [0, K], K = ∅)."""
  return jax.nn.logsumexp(_component_log_joint(toy, z=z, logsnr=logsnr, labels=labels), axis=1)


def _component_log_joint(toy: Toy2D, *, z, logsnr, labels) -> jax.Array:
  """log π_m + log N(z; α μ_m, (α² s_m² + σ²) I), [B, M]."""
  lam = jnp.asarray(logsnr, jnp.float32)[:, None]
  alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(lam))
  var = schedules.alpha_sq(lam) * jnp.asarray(toy.stds) ** 2 + schedules.sigma_sq(lam)  # [B, M]
  sq = jnp.sum(jnp.square(z[:, None, :] - alpha[..., None] * jnp.asarray(toy.means)), axis=-1)
  log_n = -0.5 * sq / var - jnp.log(2 * math.pi * var)  # 2D: −(d/2) log(2π var), d = 2
  return jnp.asarray(toy.log_weights())[labels] + log_n


def eps_fn(toy: Toy2D) -> EpsFn:
  """The exact E[ε | z_λ, label] as an ε-function (z [B, 2], λ [B], labels [B] in [0, K])."""
  means, stds2 = jnp.asarray(toy.means), jnp.asarray(toy.stds) ** 2

  def f(z, logsnr, labels):
    resp = jax.nn.softmax(_component_log_joint(toy, z=z, logsnr=logsnr, labels=labels), axis=1)
    lam = jnp.asarray(logsnr, jnp.float32)[:, None]
    alpha, sigma = schedules.alpha_sigma(lam)
    var = schedules.alpha_sq(lam) * stds2 + schedules.sigma_sq(lam)  # [B, M]
    eps_m = sigma[..., None] * (z[:, None, :] - alpha[..., None] * means) / var[..., None]
    return jnp.sum(resp[..., None] * eps_m, axis=1)

  return f


def sample_data(toy: Toy2D, *, labels: np.ndarray, seed: int = 0) -> np.ndarray:
  """Exact samples x ~ p(x | c) for each label (numpy), [N, 2]."""
  gen = np.random.default_rng(seed)
  labels = np.asarray(labels)
  out = np.empty((labels.shape[0], 2), np.float64)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    comps = np.flatnonzero(toy.classes == c)
    pick = gen.choice(comps, size=idx.size, p=toy.weights[comps] / toy.weights[comps].sum())
    out[idx] = toy.means[pick] + toy.stds[pick, None] * gen.standard_normal((idx.size, 2))
  return out


def class_moments(toy: Toy2D, *, label: int) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form mean [2] and covariance [2, 2] of p(x | c)."""
  m = toy.classes == label
  pi, mu, s2 = toy.weights[m].astype(np.float64), toy.means[m].astype(np.float64), toy.stds[m] ** 2
  pi = pi / pi.sum()
  mean = pi @ mu
  second = np.einsum("m,mi,mj->ij", pi, mu, mu) + np.sum(pi * s2) * np.eye(2)
  return mean, second - np.outer(mean, mean)


def nearest_component(toy: Toy2D, *, x: np.ndarray) -> np.ndarray:
  """Index of the closest component mean of each point, [N]."""
  d = np.sum(np.square(np.asarray(x)[:, None, :] - toy.means[None]), axis=-1)
  return np.argmin(d, axis=1)


def draw(
  toy: Toy2D,
  *,
  labels: np.ndarray,
  w: float | np.ndarray,
  config: sampling.SamplerConfig,
  seed: int = 0,
) -> np.ndarray:
  """Samples `labels` with `sampling.sample` and the exact ε; returns numpy [N, 2]."""
  labels = jnp.asarray(labels, jnp.int32)
  n = labels.shape[0]
  x = _draw_jit(toy, config)(
    jax.random.key(seed), jnp.arange(n), labels, jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n,))
  )
  return np.asarray(x)


def _draw_jit(toy: Toy2D, config: sampling.SamplerConfig):
  """jit f(rng, ids, labels, w) -> x (a new function: each call of `draw` compiles once)."""
  f = eps_fn(toy)
  return jax.jit(
    lambda rng, ids, y, w: sampling.sample(
      f,
      rng=rng,
      sample_ids=ids,
      labels=y,
      w=w,
      shape=(2,),
      null_label=toy.null_label,
      config=config,
    )
  )


def make_figure(
  toy: Toy2D | None = None,
  *,
  w_values: Sequence[float] = (0.0, 1.0, 3.0, 8.0),
  samples_per_class: int = 500,
  config: sampling.SamplerConfig | None = None,
  seed: int = 0,
):
  """A matplotlib Figure: one scatter panel per w, classes coloured, component means marked.

  Uses `matplotlib.figure.Figure` (no pyplot global state): in a notebook, return it from a cell.
  """
  from matplotlib.figure import Figure

  toy = toy or default_toy()
  config = config or sampling.SamplerConfig(num_steps=64, thresholding="none")
  labels = np.repeat(np.arange(toy.num_classes), samples_per_class)
  f = _draw_jit(toy, config)
  ids, y = jnp.arange(labels.size), jnp.asarray(labels, jnp.int32)
  fig = Figure(figsize=(3.2 * len(w_values), 3.4), layout="constrained")
  axes = fig.subplots(1, len(w_values), sharex=True, sharey=True, squeeze=False)[0]
  colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
  for ax, w in zip(axes, w_values):
    x = np.asarray(f(jax.random.key(seed), ids, y, jnp.full((labels.size,), w, jnp.float32)))
    for c in range(toy.num_classes):
      xc = x[labels == c]
      ax.scatter(
        xc[:, 0], xc[:, 1], s=3, alpha=0.5, color=colors[c % len(colors)], label=f"class {c}"
      )
    ax.scatter(toy.means[:, 0], toy.means[:, 1], marker="x", s=30, color="black", linewidths=1)
    ax.set_title(f"w = {w:g}")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
  axes[0].legend(loc="lower left", fontsize=7, markerscale=3)
  d = config.describe()
  fig.suptitle(
    f"exact-score 2D mixture: sampler={d['sampler']}, T={d['num_steps']}, "
    f"interval={d['guidance_interval']}, rescale_phi={d['rescale_phi']:g}, "
    f"thresholding={d['thresholding']}",
    fontsize=9,
  )
  return fig


def save_figure(fig, path: str) -> None:
  """Writes a Figure to `path` (PNG) with the Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(fig).print_figure(path, dpi=110)


def main(argv: Sequence[str] | None = None):
  """The command line; returns the Figure it wrote."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="toy2d.png")
  parser.add_argument("--samples", type=int, default=500, help="samples per class and w")
  parser.add_argument("--steps", type=int, default=64, help="T")
  parser.add_argument("--sampler", default="ancestral", choices=sampling.SAMPLERS)
  parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
  parser.add_argument("--v", type=float, default=0.3, help="ancestral variance interpolation")
  parser.add_argument("--w", default="0,1,3,8", help="comma-separated w values")
  parser.add_argument("--thresholding", default="none", choices=sampling.THRESHOLDING_MODES)
  parser.add_argument("--rescale-phi", type=float, default=0.0)
  parser.add_argument(
    "--interval",
    default="",
    help="guidance interval in λ, e.g. --interval=-3,2 (default: everywhere)",
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  interval = tuple(float(v) for v in args.interval.split(",")) if args.interval else None
  config = sampling.SamplerConfig(
    num_steps=args.steps,
    sampler=args.sampler,
    eta=args.eta,
    v=args.v,
    thresholding=args.thresholding,
    rescale_phi=args.rescale_phi,
    guidance_interval=interval,
  )
  w_values = tuple(float(v) for v in args.w.split(","))
  fig = make_figure(
    w_values=w_values, samples_per_class=args.samples, config=config, seed=args.seed
  )
  save_figure(fig, args.out)
  print(f"wrote {args.out} ({config.describe()})")
  return fig


if __name__ == "__main__":
  main()
