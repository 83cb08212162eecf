"""The probability-flow ODE likelihood against known answers: the exact density of the 2D mixture
(exact divergence and Hutchinson), the ELBO above it, bits/dim of a uniform image, encode → decode
on digits, one compile per w sweep, and `--mode=likelihood` end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib, likelihood, toy2d, validation
from cfg_jax.data import pipeline
from cfg_jax.jobs import likelihood as likelihood_job
from tests.helpers import tiny_config
from tests.test_no_recompile import count_compiles

TOY = toy2d.default_toy()
NULL = TOY.null_label


def held_out(n: int, seed: int = 7):
  """n exact draws: labels cycle 0, 1, 2, ∅ (∅: from the class mixture), and their true log p."""
  labels = np.arange(n) % (NULL + 1)
  x = np.zeros((n, 2), np.float32)
  for c in range(NULL):
    x[labels == c] = toy2d.sample_data(TOY, labels=labels[labels == c], seed=seed + c)
  x[labels == NULL] = toy2d.sample_data(
    TOY, labels=np.arange((labels == NULL).sum()) % 3, seed=seed
  )
  true = toy2d.log_prob(
    TOY, z=jnp.asarray(x), logsnr=jnp.full((n,), 20.0), labels=jnp.asarray(labels)
  )
  return jnp.asarray(x), jnp.asarray(labels, jnp.int32), np.asarray(true)


def toy_logp(config, x, labels, *, w=0.0, with_elbo=False):
  """Per-point log p (and its probe SE, and the ELBO in nats) under the toy's exact ε."""

  def one(f, key, xi):
    out = likelihood.log_likelihood(f, x=xi, rng=key, config=config)
    out.pop("z")
    if with_elbo:
      out["elbo"] = likelihood.elbo(f, x=xi, rng=jax.random.fold_in(key, 1), config=config)
    return out

  run = likelihood._batched(one, toy2d.eps_fn(TOY), null_label=NULL)
  keys = jax.random.split(jax.random.key(0), x.shape[0])
  return jax.tree.map(np.asarray, jax.jit(run)(labels, jnp.full(labels.shape, w), keys, x))


def test_exact_divergence_gives_the_mixture_density_and_elbo_bounds_it():
  """Dopri5 + exact divergence: mean |log p − true| < 0.01 nats (measured ~1e-4); the ELBO of the
  same ε (1024 stratified λ) is ≥ the ODE's NLL within 3 standard errors, and tight (exact ε)."""
  x, labels, true = held_out(200)
  config = likelihood.LikelihoodConfig(divergence="exact", elbo_num_logsnrs=1024)
  out = toy_logp(config, x, labels, with_elbo=True)
  assert out["converged"].all()
  assert np.mean(np.abs(out["logp"] - true)) < 0.01
  gap = out["elbo"] + out["logp"]  # ELBO − NLL per point
  se = np.std(gap, ddof=1) / math.sqrt(gap.size)
  assert np.mean(gap) > -3 * se, (np.mean(gap), se)
  assert abs(np.mean(gap)) < 0.3


def test_heun_cross_check_converges_to_the_same_density():
  """The fixed-grid Heun (sampling.py's ρ parametrisation): 0.1 nats at 512 points, worse at 64."""
  x, labels, true = held_out(60)
  err = {}
  for t in (64, 512):
    config = likelihood.LikelihoodConfig(solver="heun", num_steps=t, divergence="exact")
    err[t] = np.mean(np.abs(toy_logp(config, x, labels)["logp"] - true))
  assert err[512] < 0.2 and err[512] < err[64]


def test_hutchinson_is_within_its_stated_error():
  """K = 8 Rademacher probes: the mean error is within 3 of its reported standard errors."""
  x, labels, true = held_out(120)
  config = likelihood.LikelihoodConfig(divergence="hutchinson", num_probes=8)
  out = toy_logp(config, x, labels)
  assert np.mean(out["logp_se"]) > 0.05  # 0 only where ∂ε̃/∂z is diagonal (one component)
  mean, se = likelihood.summarize(out["logp"] - true, out["logp_se"])
  probe_se = math.sqrt(np.sum(np.square(out["logp_se"]))) / x.shape[0]
  assert abs(mean) < 3 * probe_se <= 3 * se, (mean, probe_se)


def test_bits_per_dim_convention():
  """A density uniform over all 256 dequantization bins is 8 bits/dim; slerp keeps its ends."""
  dim = 64
  nll = -dim * math.log(127.5 / 256.0)  # uniform on [−1 − 1/255, 1 + 1/255], width 256/127.5
  assert float(likelihood.bits_per_dim(jnp.float32(nll), dim=dim)) == pytest.approx(8.0, abs=1e-5)
  y = likelihood.dequantize(jax.random.key(0), jnp.zeros((1000,)))
  assert float(jnp.max(jnp.abs(y))) <= 0.5 / 127.5
  z0, z1 = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  path = likelihood.slerp(z0, z1, jnp.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(path[0], z0, atol=1e-5)
  np.testing.assert_allclose(path[-1], z1, atol=1e-5)


def _toy_apply(variables, z, logsnr, labels, train=False):
  del variables, train
  return toy2d.eps_fn(TOY)(z, logsnr, labels)


def test_one_compile_per_w_sweep():
  """After compile_fn, a sweep over three w values compiles nothing more."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
  config = likelihood.LikelihoodConfig(solver="heun", num_steps=8, elbo_num_logsnrs=4)
  fn = likelihood_job.make_fn(_toy_apply, null_label=NULL, settings=config, mesh=mesh)
  x, labels, _ = held_out(10)
  x, labels = np.asarray(x), np.asarray(labels)
  rng = jax.random.key(0)
  bs = likelihood_job.batch_layout(10, batch_size=4, mesh=mesh)
  fn = likelihood_job.compile_fn(fn, {}, rng, image_shape=(2,), batch_size=bs, mesh=mesh)
  with count_compiles() as compiles:
    rows = [
      likelihood_job.run_batches(fn, {}, rng, x=x, labels=labels, w=w, batch_size=bs, mesh=mesh)
      for w in (-1.0, 0.0, 2.0)
    ]
  assert not compiles, compiles
  assert rows[0]["bpd"].shape == (10,) and not np.allclose(rows[0]["bpd"], rows[2]["bpd"])


def test_bad_likelihood_config_is_a_clear_error():
  c = tiny_config(**{"likelihood.solver": "rk4", "likelihood.w_values": (-2.0,)})
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(c)
  assert "likelihood.solver" in str(e.value) and "likelihood.w_values" in str(e.value)


def _gaussian_eps(means: jax.Array, s: float):
  """Exact E[ε | z_λ] when x | label ~ N(means[label], s² I): σ (z − α μ) / (α² s² + σ²)."""

  def f(z, logsnr, labels):
    lam = logsnr.reshape((-1,) + (1,) * (z.ndim - 1))
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
    return sigma * (z - alpha * means[labels]) / (jnp.square(alpha * s) + jnp.square(sigma))

  return f


def test_encode_decode_reconstructs_digits():
  """On per-class Gaussians around the digits' class means (exact ε, so ε̃ at any w is the ε of
  N((1 + w) μ_c − w μ_∅, s²)), encode maps test digits to the closed-form
  z = α_min μ̃ + √(v_min / v_max) (x − α_max μ̃), v = α² s² + σ², to 1e-3, and decode brings
  them back to 1e-3 (max abs, pixels in [−1, 1]) at rtol = atol = 1e-5."""

  config = tiny_config()
  config_lib.fill_dataset_fields(config)
  x_train, y_train = pipeline.eval_arrays(config.data, split="train")
  means = np.stack([x_train[y_train == c].mean(0) for c in range(10)] + [x_train.mean(0)])
  s = 0.5
  eps_fn = _gaussian_eps(jnp.asarray(means), s)
  x, labels = pipeline.eval_arrays(config.data, max_examples=4)
  w = np.array([0.0, 2.0, -1.0, 1.0], np.float32)
  settings = likelihood.LikelihoodConfig()
  kw = dict(labels=jnp.asarray(labels), w=w, null_label=10, config=settings)
  z = jax.jit(lambda x: likelihood.encode(eps_fn, x, **kw))(jnp.asarray(x))
  x_back = jax.jit(lambda z: likelihood.decode(eps_fn, z, **kw))(z)
  mu = (1 + w[:, None, None, None]) * means[labels] - w[:, None, None, None] * means[10]
  v = lambda lam: s**2 / (1 + math.exp(-lam)) + 1 / (1 + math.exp(lam))
  a = lambda lam: math.sqrt(1 / (1 + math.exp(-lam)))
  z_true = a(-20.0) * mu + math.sqrt(v(-20.0) / v(20.0)) * (x - a(20.0) * mu)
  np.testing.assert_allclose(np.asarray(z), z_true, atol=1e-3)
  assert float(np.max(np.abs(np.asarray(x_back) - x))) < 1e-3


@pytest.mark.slow
def test_likelihood_mode_writes_results(trained_copy):
  """--mode=likelihood over w ∈ {−1, 0, 1} on 6 test digits, of a run trained 4 steps."""
  from tests.helpers import run_cli
  from tests.test_end_to_end import read_events

  workdir = trained_copy
  run_cli(
    workdir,
    "--mode=likelihood",
    "--config.likelihood.w_values=(-1.,0.,1.)",
    "--config.likelihood.num_examples=6",
    "--config.likelihood.batch_size=4",
    "--config.likelihood.solver=heun",
    "--config.likelihood.num_steps=4",
    "--config.likelihood.elbo_num_logsnrs=4",
  )
  with open(os.path.join(workdir, "likelihood", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["w"] for r in rows] == [-1.0, 0.0, 1.0]
  for r in rows:
    assert r["num_examples"] == 6 and r["nfe_mean"] == 6 and np.isfinite(r["bpd_all"])
    assert np.isfinite(r["elbo_bpd_all"]) and r["bpd_se_all"] > 0
  tags = read_events(os.path.join(workdir, "likelihood")).Tags()["tensors"]
  assert "likelihood/bpd_all/w=0" in tags and "likelihood/elbo_bpd_all/w=-1" in tags
