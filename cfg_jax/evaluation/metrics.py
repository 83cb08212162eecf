"""Sample-quality metrics on precomputed features: FID, Inception score, precision/recall.

Pure functions, numpy in and python floats out. The protocol follows openai/guided-diffusion
`evaluations/evaluator.py` (the evaluator behind the ImageNet numbers of Ho & Salimans 2022):

* FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to Inception pool_3
  features, mu = mean and sigma = np.cov(rowvar=False) (ddof = 1).
* IS (Salimans et al. 2016, openai/improved-gan `inception_score/model.py`): exp(E_x KL(p(y|x) ‖
  p(y))) per split, mean and std over 10 splits.
* Improved precision/recall (Kynkäänniemi et al. 2019, kynkaat/improved-precision-and-recall-
  metric): k = 3 nearest-neighbour balls around each sample define the real / fake manifolds.

Feature extraction (the Inception network) is not part of this module.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

# ---------------------------------------------------------------------------------------------
# Feature statistics.


def _check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"{name} must have shape [N, D], got {features.shape}.")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains NaN or inf.")
  return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) in float64 of features [N, D], N >= 2; sigma = np.cov(rowvar=False)."""
  features = _check_features(features).astype(np.float64)
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


# ---------------------------------------------------------------------------------------------
# Fréchet distance.


def _psd_eigvals_sqrt(eigvals: np.ndarray) -> np.ndarray:
  """sqrt of the eigenvalues of a PSD matrix; values below rounding level (or < 0) count as 0."""
  tol = max(float(np.max(eigvals, initial=0.0)), 0.0) * eigvals.shape[0] * np.finfo(np.float64).eps
  return np.sqrt(np.where(eigvals > tol, eigvals, 0.0))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh (negative / rounding-level eigenvalues clipped to 0)."""
  eigvals, eigvecs = np.linalg.eigh(sigma)
  return (eigvecs * _psd_eigvals_sqrt(eigvals)) @ eigvecs.T


def sqrt_trace_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((Σ1 Σ2)^{1/2}) for symmetric PSD Σ1, Σ2, computed without a non-symmetric sqrtm.

  Σ1 Σ2 is similar to the symmetric PSD matrix M = Σ1^{1/2} Σ2 Σ1^{1/2}, so both have the same
  (real, non-negative) eigenvalues and Tr((Σ1Σ2)^{1/2}) = Σ_i sqrt(λ_i(M)). Both square roots use
  eigh with negative and rounding-level eigenvalues clipped to 0, so singular covariances give a
  finite, real answer (scipy.linalg.sqrtm of Σ1Σ2 can return complex parts or fail there).
  """
  s1 = _psd_sqrt(np.asarray(sigma1, np.float64))
  m = s1 @ np.asarray(sigma2, np.float64) @ s1
  return float(np.sum(_psd_eigvals_sqrt(np.linalg.eigvalsh(0.5 * (m + m.T)))))


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """FID: ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) between N(μ1, Σ1) and N(μ2, Σ2).

  Same formula as guided-diffusion's `FIDStatistics.frechet_distance` (from bioinf-jku/TTUR), but
  the trace of the matrix square root comes from `sqrt_trace_product` (symmetric eigenproblem)
  instead of scipy.linalg.sqrtm, so no eps offset or imaginary-part check is needed. The result is
  a squared 2-Wasserstein distance, hence ≥ 0; rounding-level negatives are returned as 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(
      f"mu1 and mu2 must be vectors of the same length, got {mu1.shape} and {mu2.shape}."
    )
  d = mu1.shape[0]
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (d, d):
      raise ValueError(f"{name} must have shape ({d}, {d}) to match mu, got {sigma.shape}.")
  for name, x in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{name} contains NaN or inf.")
  diff = mu1 - mu2
  fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * sqrt_trace_product(sigma1, sigma2)
  return max(float(fid), 0.0)


def bootstrap_frechet_distances(
  features: dict[Hashable, np.ndarray],
  mu_ref: np.ndarray,
  sigma_ref: np.ndarray,
  *,
  num_rounds: int,
  seed: int = 0,
) -> dict[Hashable, np.ndarray]:
  """Paired bootstrap of the FD of several sample sets of equal size n against one reference.

  Round r draws one multiset of n row indices and applies it to every set (rows i of the sets
  are paired, e.g. sample i of each w shares its noise and label), so differences between sets
  come with their own spread. Returns {key: [num_rounds] FDs}. Tr((Σ_ref Σ)^{1/2}) is the sum of
  sqrt-eigenvalues of A Aᵀ (n×n) or AᵀA (d×d, whichever is smaller), A = X_c Σ_ref^{1/2} /
  sqrt(n − 1) (same non-zero spectrum as Σ_ref^{1/2} Σ Σ_ref^{1/2}); X Σ_ref^{1/2} is computed
  once per set and its rows resampled, which makes a round cost milliseconds.
  """
  sets = {k: np.asarray(v, np.float64) for k, v in features.items()}
  n = {v.shape[0] for v in sets.values()}
  if len(n) != 1:
    raise ValueError(f"paired bootstrap needs sample sets of one size, got sizes {sorted(n)}.")
  n = n.pop()
  mu_ref = np.asarray(mu_ref, np.float64)
  sigma_ref = np.asarray(sigma_ref, np.float64)
  root = _psd_sqrt(sigma_ref)
  tr_ref = float(np.trace(sigma_ref))
  rooted = {k: x @ root for k, x in sets.items()}
  rng = np.random.default_rng(seed)
  out = {k: np.empty(num_rounds) for k in sets}
  for r in range(num_rounds):
    idx = rng.integers(0, n, n)
    for k, x in sets.items():
      xb = x[idx]
      mu = xb.mean(0)
      xc = (xb - mu) / np.sqrt(n - 1)
      yb = rooted[k][idx]
      a = (yb - yb.mean(0)) / np.sqrt(n - 1)  # = xc @ root
      gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
      tr_sqrt = float(np.sum(_psd_eigvals_sqrt(np.linalg.eigvalsh(0.5 * (gram + gram.T)))))
      diff = mu - mu_ref
      out[k][r] = max(diff @ diff + float(np.sum(xc * xc)) + tr_ref - 2.0 * tr_sqrt, 0.0)
  return out


# ---------------------------------------------------------------------------------------------
# Inception score.


def inception_score(
  logits_or_probs: np.ndarray, *, num_splits: int = 10, from_logits: bool = True
) -> tuple[float, float]:
  """(mean, std) over `num_splits` splits of exp(E_x KL(p(y|x) ‖ p(y))), p(y) = split mean.

  As openai/improved-gan `inception_score/model.py` (Salimans et al. 2016): split i is rows
  [i N // num_splits, (i + 1) N // num_splits). guided-diffusion's evaluator uses splits of 5000
  rows and reports the mean only, which for its 50k samples is the same 10 splits. Computed in
  float64 from log-probabilities (log-softmax of logits), with 0 log 0 = 0 for zero probabilities.
  """
  x = _check_features(logits_or_probs, "logits_or_probs").astype(np.float64)
  n = x.shape[0]
  if num_splits < 1 or n < num_splits:
    raise ValueError(
      f"need 1 <= num_splits <= N, got num_splits={num_splits} for N={n} "
      "predictions (the usual protocol is 10 splits of 5000)."
    )
  if from_logits:
    logp = special.log_softmax(x, axis=1)
  else:
    if np.any(x < 0) or not np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
      raise ValueError(
        "probabilities must be non-negative and sum to 1 per row; pass from_logits=True for logits."
      )
    with np.errstate(divide="ignore"):
      logp = np.log(x)
  scores = []
  for i in range(num_splits):
    part = logp[i * n // num_splits : (i + 1) * n // num_splits]
    # log p(y) = log mean_x p(y|x), shifted by the column max so that it stays finite and exact.
    shift = np.max(part, axis=0)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # −inf − (−inf) only where p = 0
      log_py = shift + np.log(np.mean(np.exp(part - shift), axis=0))
      p = np.exp(part)
      kl = np.where(p > 0, p * (part - log_py), 0.0).sum(axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# Improved precision and recall.


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances [A, B] as ‖a‖² − 2 a·b + ‖b‖², clipped at 0 (as the reference)."""
  d = jnp.sum(a * a, axis=1)[:, None] - 2.0 * (a @ b.T) + jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_nn_radii(blocks: jax.Array, valid: jax.Array, *, k: int) -> jax.Array:
  """Squared distance to the (k+1)-th nearest row of the same set, i.e. the k-th excluding the
  point itself; blocks [nb, B, D], valid [nb, B] (padding rows are never neighbours)."""

  def row_block(rows):
    def step(best, col):
      cols, ok = col
      d = jnp.where(ok[None, :], _sq_dists(rows, cols), jnp.inf)
      return -jax.lax.top_k(-jnp.concatenate([best, d], axis=1), k + 1)[0], None

    init = jnp.full((rows.shape[0], k + 1), jnp.inf, rows.dtype)
    best, _ = jax.lax.scan(step, init, (blocks, valid))
    return best[:, k]

  return jax.lax.map(row_block, blocks)


@jax.jit
def _in_manifold(queries: jax.Array, ref_blocks: jax.Array, ref_radii: jax.Array) -> jax.Array:
  """[nq, Bq] bool: query lies within the ball of some reference row (padding radii are −inf)."""

  def row_block(rows):
    def step(inside, col):
      cols, radii = col
      return inside | jnp.any(_sq_dists(rows, cols) <= radii[None, :], axis=1), None

    inside, _ = jax.lax.scan(step, jnp.zeros(rows.shape[0], bool), (ref_blocks, ref_radii))
    return inside

  return jax.lax.map(row_block, queries)


def _blocks(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads x [N, D] with zero rows to a multiple of size: ([nb, size, D], valid [nb, size])."""
  nb = -(-x.shape[0] // size)
  pad = nb * size - x.shape[0]
  xp = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
  valid = np.arange(nb * size) < x.shape[0]
  return xp.reshape(nb, size, -1), valid.reshape(nb, size)


def precision_recall(
  real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3, batch_size: int = 10000
) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

  Each set's manifold is the union of balls around its samples whose radius is the distance to
  the k-th nearest other sample of the same set (the reference takes index k of the sorted
  distance row, which includes the point itself at 0; duplicates count as neighbours). precision =
  fraction of fake samples inside the real manifold, recall = fraction of real samples inside the
  fake manifold, with `distance <= radius` as in guided-diffusion's `ManifoldEstimator`.

  Squared distances are computed in float32 with jax on tiles of at most batch_size × batch_size
  (memory stays bounded for 50k × 50k), after subtracting the real mean from both sets
  (distances are translation invariant; centring reduces cancellation in ‖a‖² − 2a·b + ‖b‖²).
  """
  real = _check_features(real_features, "real_features").astype(np.float64)
  fake = _check_features(fake_features, "fake_features").astype(np.float64)
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"real and fake features differ in dimension: {real.shape} vs {fake.shape}.")
  if k < 1 or min(len(real), len(fake)) <= k:
    raise ValueError(
      f"need k >= 1 and more than k samples per set, got k={k}, "
      f"{len(real)} real and {len(fake)} fake."
    )
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  center = real.mean(axis=0)
  real_b, real_ok = _blocks((real - center).astype(np.float32), min(batch_size, len(real)))
  fake_b, fake_ok = _blocks((fake - center).astype(np.float32), min(batch_size, len(fake)))
  # Padding rows get radius −inf so that nothing is ever inside their ball.
  real_r = jnp.where(real_ok, _kth_nn_radii(real_b, real_ok, k=k), -jnp.inf)
  fake_r = jnp.where(fake_ok, _kth_nn_radii(fake_b, fake_ok, k=k), -jnp.inf)
  fake_in = np.asarray(_in_manifold(fake_b, real_b, real_r))[fake_ok]
  real_in = np.asarray(_in_manifold(real_b, fake_b, fake_r))[real_ok]
  return float(np.mean(fake_in)), float(np.mean(real_in))
