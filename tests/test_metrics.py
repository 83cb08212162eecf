"""Evaluation metrics against independent implementations and closed forms."""

import numpy as np
import pytest
from scipy import linalg

from cfg_jax.evaluation import metrics


def _random_cov(rng, d, dof=None):
  """A well-conditioned random covariance (Wishart with 4d degrees of freedom, scaled)."""
  a = rng.normal(size=(d, dof or 4 * d))
  return a @ a.T / a.shape[1]


def _fid_sqrtm(mu1, sigma1, mu2, sigma2):
  """The textbook FID with scipy.linalg.sqrtm (TTUR / guided-diffusion, no eps fallback)."""
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2).real
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)


# ------------------------------------------------------------------------------------------- FID


def test_fid_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  for d in (1, 5, 32):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, _fid_sqrtm(mu1, s1, mu2, s2), rtol=1e-6)


def test_fid_identical_stats_is_zero_and_symmetric():
  rng = np.random.default_rng(1)
  mu, s = rng.normal(size=16), _random_cov(rng, 16)
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-8
  mu2, s2 = rng.normal(size=16), _random_cov(rng, 16)
  np.testing.assert_allclose(
    metrics.frechet_distance(mu, s, mu2, s2), metrics.frechet_distance(mu2, s2, mu, s), rtol=1e-10
  )


def test_fid_isotropic_and_commuting_closed_forms():
  rng = np.random.default_rng(2)
  d, a, b = 7, 1.5, 0.25
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  want = np.sum((mu1 - mu2) ** 2) + d * (a - b) ** 2
  got = metrics.frechet_distance(mu1, a**2 * np.eye(d), mu2, b**2 * np.eye(d))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Commuting (diagonal) covariances: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ_i (√a_i − √b_i)².
  va, vb = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
  q = np.linalg.qr(rng.normal(size=(d, d)))[0]  # a shared rotation keeps them commuting
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
  got = metrics.frechet_distance(mu1, q @ np.diag(va) @ q.T, mu2, q @ np.diag(vb) @ q.T)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_fid_singular_covariances():
  rng = np.random.default_rng(3)
  d, r = 16, 4
  a, b = rng.normal(size=(d, r)), rng.normal(size=(d, r))
  s1, s2 = a @ a.T, b @ b.T  # rank 4 of 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(got) and got >= 0.0
  # Independent closed form: the eigenvalues of AAᵀBBᵀ are the squared singular values of AᵀB, so
  # Tr((Σ1Σ2)^½) = ‖AᵀB‖_* (nuclear norm). scipy's sqrtm(Σ1Σ2) is complex here (imaginary parts
  # ~1e-6, trace off by ~5e-8 relative with scipy 1.17); the eigh route is exact to rounding.
  want_tr = np.linalg.svd(a.T @ b, compute_uv=False).sum()
  np.testing.assert_allclose(metrics.sqrt_trace_product(s1, s2), want_tr, rtol=1e-10)
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * want_tr
  np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(got, metrics.frechet_distance(mu2, s2, mu1, s1), rtol=1e-10)
  # Same singular covariance on both sides: only the mean term remains.
  np.testing.assert_allclose(
    metrics.frechet_distance(mu1, s1, mu2, s1), np.sum((mu1 - mu2) ** 2), atol=1e-8
  )
  assert metrics.frechet_distance(mu1, s1, mu1, s1) < 1e-8
  assert metrics.frechet_distance(mu1, np.zeros((d, d)), mu1, np.zeros((d, d))) == 0.0


def test_fid_shape_errors():
  mu, s = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="mu1 and mu2"):
    metrics.frechet_distance(mu, s, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="sigma2 must have shape"):
    metrics.frechet_distance(mu, s, mu, np.eye(4))
  with pytest.raises(ValueError, match="mu1 and mu2"):
    metrics.frechet_distance(np.zeros((3, 1)), s, mu, s)
  with pytest.raises(ValueError, match="NaN"):
    metrics.frechet_distance(mu, np.full((3, 3), np.nan), mu, s)


# -------------------------------------------------------------------------------- statistics


def test_feature_statistics():
  rng = np.random.default_rng(4)
  x = (1e4 + rng.normal(size=(103, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
  mu, sigma = metrics.feature_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mu, x64.mean(axis=0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2"):
    metrics.feature_statistics(x[:1])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    metrics.feature_statistics(np.zeros(5))


# ---------------------------------------------------------------------------------------- IS


def _is_loop(logits, num_splits):
  """improved-gan's formula, one sample at a time."""
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  n, scores = len(probs), []
  for i in range(num_splits):
    part = probs[i * n // num_splits : (i + 1) * n // num_splits]
    py = part.mean(axis=0)
    kls = [np.sum(p * (np.log(p) - np.log(py))) for p in part]
    scores.append(np.exp(np.mean(kls)))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_loop():
  rng = np.random.default_rng(5)
  logits = 3.0 * rng.normal(size=(253, 12))  # 253 is not a multiple of 10: uneven splits
  for splits in (1, 10):
    mean, std = metrics.inception_score(logits, num_splits=splits)
    assert isinstance(mean, float) and isinstance(std, float)
    np.testing.assert_allclose((mean, std), _is_loop(logits, splits), rtol=1e-10, atol=1e-12)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(
    metrics.inception_score(probs, from_logits=False), _is_loop(logits, 10), rtol=1e-10
  )


def test_inception_score_analytic():
  assert metrics.inception_score(np.zeros((50, 7))) == (1.0, 0.0)
  assert metrics.inception_score(np.full((50, 7), 1 / 7), from_logits=False) == (1.0, 0.0)
  k, splits = 8, 10
  labels = np.tile(np.arange(k), 3 * splits)  # each split holds every class 3 times
  onehot = np.eye(k)[labels]
  mean, std = metrics.inception_score(onehot, num_splits=splits, from_logits=False)
  np.testing.assert_allclose((mean, std), (k, 0.0), rtol=1e-12, atol=1e-12)
  mean, _ = metrics.inception_score(100.0 * onehot, num_splits=splits)  # near-one-hot logits
  np.testing.assert_allclose(mean, k, rtol=1e-12)


def test_inception_score_errors():
  with pytest.raises(ValueError, match="num_splits"):
    metrics.inception_score(np.zeros((9, 4)), num_splits=10)
  with pytest.raises(ValueError, match="sum to 1"):
    metrics.inception_score(np.ones((20, 4)), from_logits=False)


# ----------------------------------------------------------------------- precision / recall


def _pr_brute(real, fake, k):
  """Full float64 distance matrices, radii by np.sort (index k skips the point itself)."""
  dist = lambda a, b: np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
  r_real = np.sort(dist(real, real), axis=1)[:, k]
  r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
  precision = np.mean(np.any(dist(fake, real) <= r_real[None, :], axis=1))
  recall = np.mean(np.any(dist(real, fake) <= r_fake[None, :], axis=1))
  return precision, recall


def test_precision_recall_matches_brute_force_and_batching():
  rng = np.random.default_rng(6)
  real = rng.normal(size=(200, 5))
  fake = 1.3 * rng.normal(size=(150, 5)) + 0.4
  want = _pr_brute(real, fake, 3)
  assert 0.5 < want[0] < 1 and 0.5 < want[1] < 1  # a non-trivial case
  # (Every fake/real point is >= 1e-3 away from deciding ball boundaries, far above float32 error.)
  got = metrics.precision_recall(real, fake)
  assert all(isinstance(v, float) for v in got)
  assert got == pytest.approx(want, abs=1e-12)
  assert metrics.precision_recall(real, fake, batch_size=7) == got
  assert metrics.precision_recall(real, fake, k=5, batch_size=64) == pytest.approx(
    _pr_brute(real, fake, 5), abs=1e-12
  )


def test_precision_recall_constructed_cases():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(60, 4))
  assert metrics.precision_recall(x, x) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 1000.0) == (0.0, 0.0)
  # Mode collapse: real has two far-apart clusters, fake covers only the first one.
  a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 100.0
  fake = a + 1e-3 * rng.normal(size=a.shape)
  assert metrics.precision_recall(np.concatenate([a, b]), fake, batch_size=16) == (1.0, 0.5)


def test_precision_recall_errors():
  with pytest.raises(ValueError, match="more than k"):
    metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
  with pytest.raises(ValueError, match="dimension"):
    metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


def test_bootstrap_frechet_distances_small_n_trick_and_pairing():
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(300, 40))
  mu, sigma = metrics.feature_statistics(ref)
  a = rng.normal(size=(25, 40)) + 0.3  # n < d: the n×n route
  b = a + 0.05 * rng.normal(size=a.shape)
  boot = metrics.bootstrap_frechet_distances({"a": a, "b": b}, mu, sigma, num_rounds=30, seed=1)
  assert boot["a"].shape == (30,)
  # Each round equals the direct FD of the resampled rows (same indices for both sets).
  idx = np.random.default_rng(1).integers(0, 25, 25)
  for key, x in (("a", a), ("b", b)):
    direct = metrics.frechet_distance(*metrics.feature_statistics(x[idx]), mu, sigma)
    np.testing.assert_allclose(boot[key][0], direct, rtol=1e-9)
  # Pairing: the spread of the difference is far below the spread of either FD.
  assert np.std(boot["a"] - boot["b"]) < 0.3 * np.std(boot["a"])
  # n > d: the d×d route gives the direct FD too.
  c = rng.normal(size=(60, 40)) - 0.2
  boot_c = metrics.bootstrap_frechet_distances({"c": c}, mu, sigma, num_rounds=2, seed=3)
  idx = np.random.default_rng(3).integers(0, 60, 60)
  direct = metrics.frechet_distance(*metrics.feature_statistics(c[idx]), mu, sigma)
  np.testing.assert_allclose(boot_c["c"][0], direct, rtol=1e-9)
  with pytest.raises(ValueError, match="one size"):
    metrics.bootstrap_frechet_distances({"a": a, "c": a[:5]}, mu, sigma, num_rounds=1)
