"""The exact-score 2D mixture: its ε, and every sampler against its known moments."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import sampling, schedules, toy2d
from tests.helpers import class_separation_and_spread, mixture_moment_error

TOY = toy2d.default_toy()
N = 1500  # 500 per class
LABELS = np.arange(N) % TOY.num_classes
W_SWEEP = (0.0, 1.0, 3.0, 8.0)
T_SMALL, T_LARGE = 4, 64
TRACES: dict[tuple[str, int], int] = {}


@functools.cache
def _sampler(name: str, num_steps: int):
  cfg = sampling.SamplerConfig(num_steps=num_steps, sampler=name, thresholding="none")
  eps = toy2d.eps_fn(TOY)

  def run(ids, y, w):
    TRACES[(name, num_steps)] = TRACES.get((name, num_steps), 0) + 1
    return sampling.sample(
      eps,
      rng=jax.random.key(0),
      sample_ids=ids,
      labels=y,
      w=w,
      shape=(2,),
      null_label=TOY.null_label,
      config=cfg,
    )

  return jax.jit(run)


@functools.cache
def draw(name: str, num_steps: int, w: float) -> np.ndarray:
  """N samples (same ids for every call: common noise across T and w)."""
  f = _sampler(name, num_steps)
  x = np.asarray(f(jnp.arange(N), jnp.asarray(LABELS, jnp.int32), jnp.full((N,), w)))
  assert np.isfinite(x).all()
  return x


def moment_error(x: np.ndarray) -> float:
  return mixture_moment_error(TOY, x, LABELS)


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
  """2 E|X − Y| − E|X − X'| − E|Y − Y'| (0 iff same distribution)."""
  d = lambda p, q: np.linalg.norm(p[:, None] - q[None], axis=-1).mean()
  return float(2 * d(a, b) - d(a, a) - d(b, b))


def max_class_energy(a: np.ndarray, b: np.ndarray) -> float:
  return max(energy_distance(a[LABELS == c], b[LABELS == c]) for c in range(TOY.num_classes))


# --- the mixture itself ------------------------------------------------------------------------


def test_eps_is_minus_sigma_times_score():
  # At λ = −20, −3, 0, 3, 10, 20 at once (λ per sample), labels incl. ∅ = 3.
  logsnrs = np.array([-20.0, -3.0, 0.0, 3.0, 10.0, 20.0], np.float32)
  lam = jnp.asarray(np.repeat(logsnrs, 8))
  z = jax.random.normal(jax.random.key(0), (lam.shape[0], 2))
  z = z * jnp.where(lam < 5, 1.0, 0.5)[:, None]
  y = jnp.tile(jnp.array([0, 1, 2, 3]), lam.shape[0] // 4)
  score = jax.jit(jax.grad(lambda z: toy2d.log_prob(TOY, z=z, logsnr=lam, labels=y).sum()))(z)
  _, sigma = schedules.alpha_sigma(lam)
  eps = jax.jit(toy2d.eps_fn(TOY))(z, lam, y)
  assert np.isfinite(np.asarray(eps)).all()
  np.testing.assert_allclose(eps, -sigma[:, None] * score, rtol=1e-4, atol=1e-5)


def test_null_eps_is_the_class_mixture():
  # ε_∅(z) = Σ_c p(c | z) ε_c(z), with p(c | z) ∝ p(c) p_λ(z | c).
  z = jax.random.normal(jax.random.key(1), (5, 2))
  lam = jnp.full((5,), 0.5)
  f = toy2d.eps_fn(TOY)

  @jax.jit
  def both(z):
    per_class = jnp.stack([f(z, lam, jnp.full((5,), c)) for c in range(3)], axis=1)
    log_post = jnp.stack(
      [toy2d.log_prob(TOY, z=z, logsnr=lam, labels=jnp.full((5,), c)) for c in range(3)], axis=1
    ) + jnp.log(TOY.class_prior)
    mix = jnp.sum(jax.nn.softmax(log_post, axis=1)[..., None] * per_class, axis=1)
    return f(z, lam, jnp.full((5,), 3)), mix

  null, mix = both(z)
  np.testing.assert_allclose(null, mix, rtol=1e-5, atol=1e-6)


def test_exact_data_samples_match_closed_form_moments():
  x = toy2d.sample_data(TOY, labels=np.repeat(np.arange(3), 20000), seed=0)
  for c in range(3):
    mean, cov = toy2d.class_moments(TOY, label=c)
    xc = x[c * 20000 : (c + 1) * 20000]
    np.testing.assert_allclose(xc.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(xc.T), cov, atol=0.005)


# --- every sampler on the mixture --------------------------------------------------------------


@pytest.mark.parametrize("name", sampling.SAMPLERS)
def test_w0_recovers_mixture_moments_as_T_grows(name):
  err_small = moment_error(draw(name, T_SMALL, 0.0))
  err_large = moment_error(draw(name, T_LARGE, 0.0))
  # Exact samples of the same size give ~0.15 (sampling noise); T = 4 gives ~1.1.
  assert err_large < 0.4, (err_small, err_large)
  assert err_large < 0.5 * err_small, (err_small, err_large)


def test_samplers_agree_in_distribution():
  # Energy distance per class: independent exact sets of 500 give ~0.001, T = 64 samplers
  # 0.002–0.005 between each other and to exact data, T = 4 ~0.1.
  data = toy2d.sample_data(TOY, labels=LABELS, seed=1)
  for a in sampling.SAMPLERS:
    xa = draw(a, T_LARGE, 0.0)
    assert max_class_energy(xa, data) < 0.012, a
    assert max_class_energy(draw(a, T_SMALL, 0.0), data) > 0.03, a
    for b in sampling.SAMPLERS:
      if a < b:
        assert max_class_energy(xa, draw(b, T_LARGE, 0.0)) < 0.012, (a, b)


@pytest.mark.parametrize("name", sampling.SAMPLERS)
def test_guidance_moves_away_from_other_classes_and_sharpens(name):
  dist, spread = [], []
  for w in W_SWEEP:
    d, s = class_separation_and_spread(TOY, draw(name, T_LARGE, w), LABELS)
    dist.append(d)
    spread.append(s)
  assert all(b > a + 0.005 for a, b in zip(dist, dist[1:])), dist
  assert all(b < a * 1.01 for a, b in zip(spread, spread[1:])), spread
  assert spread[-1] < 0.85 * spread[0], spread
  assert TRACES[(name, T_LARGE)] == 1  # the w sweep compiled once


# --- the demo ------------------------------------------------------------------------------------


def test_main_writes_png_and_returns_figure(tmp_path):
  from matplotlib.figure import Figure

  out = tmp_path / "toy.png"
  fig = toy2d.main(
    ["--out", str(out), "--samples", "10", "--steps", "4", "--sampler", "ddim", "--w", "0,3"]
  )
  assert isinstance(fig, Figure) and len(fig.axes) == 2  # what make_figure returns
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
