"""Schedule, diffusion math and guidance against closed forms and direct Bayes computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion, guidance, sampling, schedules


def test_schedule_endpoints_monotone():
  u = jnp.linspace(0.0, 1.0, 1001)
  lam = schedules.logsnr_schedule_cosine(u, logsnr_min=-20.0, logsnr_max=20.0)
  np.testing.assert_allclose(lam[0], 20.0, atol=1e-3)
  np.testing.assert_allclose(lam[-1], -20.0, atol=1e-3)
  assert bool(jnp.all(jnp.diff(lam) < 0))
  lam2 = schedules.logsnr_schedule_cosine(0.5, logsnr_min=-5.0, logsnr_max=7.0)
  assert -5.0 < float(lam2) < 7.0


def test_schedule_rejects_bad_range():
  with pytest.raises(ValueError, match="logsnr_min"):
    schedules.logsnr_schedule_cosine(0.5, logsnr_min=3.0, logsnr_max=-3.0)


def test_alpha_sigma_identity_and_extremes():
  lam = jnp.array([-20.0, -5.0, 0.0, 3.0, 20.0])
  alpha, sigma = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), lam, rtol=1e-5, atol=1e-5)
  # σ at λ = 20 is e^{-10}-ish, not 0 (1 − α² would round to 0 in float32).
  assert float(sigma[-1]) > 0 and float(schedules.sigma_sq(20.0)) == pytest.approx(
    2.06e-9, rel=1e-2
  )


def test_x_from_eps_inverts_diffuse():
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (4, 3, 3, 2))
  eps = jax.random.normal(k2, x.shape)
  lam = jnp.array([-10.0, -1.0, 2.0, 15.0])
  z = diffusion.diffuse(x=x, eps=eps, logsnr=lam)
  np.testing.assert_allclose(diffusion.x_from_eps(z=z, eps=eps, logsnr=lam), x, atol=2e-3)


def _bayes_posterior(z, x, lam, lam_next):
  """q(z_λ'|z_λ,x) ∝ q(z_λ'|x) q(z_λ|z_λ'), Gaussians multiplied out in float64."""
  sig = lambda t: 1 / (1 + np.exp(-t))
  a, a_n = np.sqrt(sig(lam)), np.sqrt(sig(lam_next))
  s2, s2_n = sig(-lam), sig(-lam_next)
  ratio = a / a_n
  var_fwd = s2 - ratio**2 * s2_n  # Var[z_λ | z_λ']
  prec = 1 / s2_n + ratio**2 / var_fwd
  mean = (a_n * x / s2_n + ratio * z / var_fwd) / prec
  return mean, 1 / prec, var_fwd


@pytest.mark.parametrize("lam,lam_next", [(-20.0, -15.0), (-3.0, -1.0), (0.0, 4.0), (10.0, 20.0)])
def test_posterior_matches_bayes(lam, lam_next):
  z, x = np.array([[0.7, -1.3]]), np.array([[0.2, 0.9]])
  mean, var = diffusion.posterior_mean_variance(
    z=jnp.asarray(z, jnp.float32),
    x=jnp.asarray(x, jnp.float32),
    logsnr=jnp.array([lam]),
    logsnr_next=jnp.array([lam_next]),
  )
  m_ref, v_ref, fwd_ref = _bayes_posterior(z, x, lam, lam_next)
  np.testing.assert_allclose(mean, m_ref, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(var[0, 0], v_ref, rtol=2e-4)
  for v in (0.0, 0.3, 1.0):
    lv = diffusion.sampler_log_variance(logsnr=lam, logsnr_next=lam_next, v=v)
    np.testing.assert_allclose(np.exp(lv), v_ref ** (1 - v) * fwd_ref**v, rtol=5e-4)


def test_sampler_variance_finite_near_logsnr_max():
  lv = diffusion.sampler_log_variance(logsnr=19.99, logsnr_next=20.0, v=0.3)
  assert np.isfinite(float(lv))
  mean, var = diffusion.posterior_mean_variance(
    z=jnp.ones((1, 2)), x=jnp.ones((1, 2)), logsnr=jnp.array([19.99]), logsnr_next=jnp.array([20.0])
  )
  assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))


def test_eps_loss():
  a = jnp.ones((2, 4, 4, 1))
  np.testing.assert_allclose(diffusion.eps_loss(eps_pred=a, eps=0 * a), [1.0, 1.0])


def test_label_dropout_rate():
  labels = jnp.zeros((200_000,), jnp.int32) + 3
  out = guidance.drop_labels(jax.random.key(1), labels, p_uncond=0.2, null_label=10)
  frac = float(jnp.mean(out == 10))
  assert abs(frac - 0.2) < 0.005  # 200k Bernoulli(0.2): std 0.0009
  assert set(np.unique(out).tolist()) == {3, 10}
  assert (
    int(jnp.sum(guidance.drop_labels(jax.random.key(1), labels, p_uncond=0.0, null_label=10) == 10))
    == 0
  )


def test_guided_eps_combination_and_batched_equals_separate():
  ec, eu = jnp.full((2, 3), 2.0), jnp.full((2, 3), 1.0)
  np.testing.assert_allclose(guidance.guided_eps(eps_cond=ec, eps_uncond=eu, w=0.0), ec)
  np.testing.assert_allclose(
    guidance.guided_eps(eps_cond=ec, eps_uncond=eu, w=jnp.array([1.0, 3.0])), [[3.0] * 3, [5.0] * 3]
  )
  calls = []

  def eps_fn(z, lam, y):
    calls.append(z.shape[0])
    return z * (1.0 + y[:, None].astype(z.dtype)) + lam[:, None]

  # The sampler's lines 3–4 (no thresholding): ε̃ and x̃ from ONE forward call on [z, z].
  z = jnp.arange(6.0).reshape(2, 3)
  lam, y, w = jnp.float32(0.5), jnp.array([1, 2]), jnp.array([0.5, 2.0])
  x, batched = sampling.denoise(
    eps_fn,
    z=z,
    logsnr=lam,
    labels=y,
    w=w,
    null_label=5,
    config=sampling.SamplerConfig(thresholding="none"),
  )
  assert calls == [4]  # one forward call on [z, z]
  lams = jnp.full((2,), lam)
  sep = guidance.guided_eps(
    eps_cond=eps_fn(z, lams, y), eps_uncond=eps_fn(z, lams, jnp.full_like(y, 5)), w=w
  )
  np.testing.assert_allclose(batched, sep, rtol=1e-6)
  np.testing.assert_allclose(x, diffusion.x_from_eps(z=z, eps=sep, logsnr=lams), rtol=1e-6)
