"""Samplers and guidance variants: determinism, equivalences, the guidance interval's cost, CFG
rescale, thresholding, one compile per w sweep, batch-independent noise, config plumbing."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib, guidance, sampling, toy2d, validation
from tests.helpers import load_config, tiny_config

TOY = toy2d.default_toy()
TOY_EPS = toy2d.eps_fn(TOY)
B = 8
IDS = jnp.arange(B)
LABELS = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
Z_INIT = jax.random.normal(jax.random.key(42), (B, 2))
# Every option on (used for each sampler): interval, rescale, dynamic thresholding, DDIM noise.
ALL_OPTIONS = dict(
  num_steps=8, eta=0.5, guidance_interval=(-5.0, 5.0), rescale_phi=0.5, thresholding="dynamic"
)
CALLS: list[tuple[int, float]] = []
RECORD = [False]


def _record(logsnr, *, batch):
  if RECORD[0]:
    CALLS.append((batch, float(logsnr[0])))


def EPS(z, logsnr, labels):
  """The toy's exact ε; reports (batch size, λ) of each call to CALLS while RECORD[0]."""
  jax.debug.callback(functools.partial(_record, batch=z.shape[0]), logsnr)
  return TOY_EPS(z, logsnr, labels)


def cfg(**kw) -> sampling.SamplerConfig:
  return sampling.SamplerConfig(**{"num_steps": 16, "thresholding": "none", **kw})


@functools.cache
def runner(config: sampling.SamplerConfig):
  """jit f(rng, ids, labels, w, z_init); its traces are counted in TRACES[config]."""

  def f(rng, ids, y, w, z_init):
    TRACES[config] = TRACES.get(config, 0) + 1
    return sampling.sample(
      EPS,
      rng=rng,
      sample_ids=ids,
      labels=y,
      w=w,
      shape=(2,),
      null_label=TOY.null_label,
      config=config,
      z_init=z_init,
    )

  return jax.jit(f)


TRACES: dict[sampling.SamplerConfig, int] = {}


def run(config, *, w=0.0, seed=0, ids=IDS, labels=LABELS, z_init=Z_INIT):
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), ids.shape)
  return np.asarray(runner(config)(jax.random.key(seed), ids, labels, w, z_init))


# --- determinism and equivalences between samplers ----------------------------------------------


def test_ddim_eta0_depends_only_on_initial_noise():
  c = cfg(sampler="ddim", eta=0.0)
  np.testing.assert_array_equal(run(c, w=2.0, seed=0), run(c, w=2.0, seed=1))
  # The same check sees the step noise of a stochastic sampler (DDIM η = 1).
  c1 = cfg(sampler="ddim", eta=1.0)
  assert not np.allclose(run(c1, w=2.0, seed=0), run(c1, w=2.0, seed=1))


def test_ddim_eta1_is_ancestral_with_posterior_variance():
  for w in (0.0, 3.0):
    np.testing.assert_allclose(
      run(cfg(sampler="ddim", eta=1.0), w=w),
      run(cfg(sampler="ancestral", v=0.0), w=w),
      rtol=1e-4,
      atol=1e-4,
    )


def test_euler_equals_ddim_eta0_and_heun_converges_to_it():
  for w in (0.0, 3.0):
    ddim16, ddim128 = run(cfg(sampler="ddim"), w=w), run(cfg(sampler="ddim", num_steps=128), w=w)
    np.testing.assert_allclose(run(cfg(sampler="euler"), w=w), ddim16, rtol=1e-4, atol=1e-4)
    # DDIM η = 0 (1st order) moves ~0.01–0.02 from T = 16 to 128; Heun at 128 is within 0.003.
    heun_gap = np.abs(run(cfg(sampler="heun", num_steps=128), w=w) - ddim128).mean()
    ddim_gap = np.abs(ddim16 - ddim128).mean()
    assert heun_gap < 0.005 and heun_gap < 0.5 * ddim_gap, (heun_gap, ddim_gap)


# --- guidance interval ---------------------------------------------------------------------------


def test_guidance_interval_runs_only_the_conditional_half_outside():
  c = cfg(sampler="heun", **ALL_OPTIONS)
  CALLS.clear()
  RECORD[0] = True
  try:
    x = run(c, w=3.0, z_init=None)
    jax.effects_barrier()
  finally:
    RECORD[0] = False
  lams = c.eval_logsnrs()
  assert [lam for _, lam in CALLS] == pytest.approx(list(lams), abs=1e-6)  # 2T − 1 evaluations
  inside = (lams >= -5.0) & (lams <= 5.0)
  assert 0 < inside.sum() < len(lams)
  assert [n for n, _ in CALLS] == [2 * B if i else B for i in inside]
  assert c.describe()["guided_evals"] == int(inside.sum())
  assert c.describe()["network_evals"] == 15 and np.isfinite(x).all()


def test_empty_interval_is_conditional_and_full_interval_is_plain_guidance():
  plain = cfg(sampler="ddim")
  empty = cfg(sampler="ddim", guidance_interval=(30.0, 40.0))
  full = cfg(sampler="ddim", guidance_interval=(-20.0, 20.0))
  assert empty.describe()["guided_evals"] == 0 and full.describe()["guided_evals"] == 16
  np.testing.assert_allclose(run(empty, w=3.0), run(plain, w=0.0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(run(full, w=3.0), run(plain, w=3.0), rtol=1e-6, atol=1e-6)
  assert not np.allclose(run(plain, w=3.0), run(plain, w=0.0))


def test_interval_from_edm_sigmas():
  lo, hi = guidance.interval_from_sigmas(sigma_lo=0.28, sigma_hi=5.42)
  assert lo == pytest.approx(-2 * np.log(5.42)) and hi == pytest.approx(-2 * np.log(0.28))
  assert guidance.interval_from_sigmas(sigma_lo=0.0, sigma_hi=1.0) == (0.0, float("inf"))


# --- CFG rescale and thresholding ---------------------------------------------------------------


def test_rescale_phi0_is_plain_and_phi1_matches_conditional_std():
  x_c = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
  noise = jax.random.normal(jax.random.key(1), (4, 3, 3, 2))
  x_g = 3.0 * x_c + noise * jnp.arange(1, 5)[:, None, None, None]

  @jax.jit
  def check(x_g, x_c):
    out = {
      phi: guidance.rescale_guided(x_guided=x_g, x_cond=x_c, phi=phi) for phi in (0.0, 0.5, 1.0)
    }
    return out, guidance.per_sample_std(x_g), guidance.per_sample_std(x_c)

  out, std_g, std_c = check(x_g, x_c)
  np.testing.assert_array_equal(out[0.0], x_g)
  np.testing.assert_allclose(guidance.per_sample_std(out[1.0]), std_c, rtol=1e-5)
  np.testing.assert_allclose(out[1.0] * std_g / std_c, x_g, rtol=1e-5, atol=1e-5)  # rescaled x_g
  np.testing.assert_allclose(out[0.5], 0.5 * (out[1.0] + x_g), rtol=1e-5, atol=1e-6)


def test_rescale_is_a_no_op_without_guidance_in_the_sampler():
  # At w = 0 the guided x̂ is the conditional one, so φ = 1 changes nothing; at w = 3 it does.
  plain, resc = cfg(sampler="ddim"), cfg(sampler="ddim", rescale_phi=1.0)
  np.testing.assert_allclose(run(resc, w=0.0), run(plain, w=0.0), rtol=1e-6, atol=1e-6)
  assert not np.allclose(run(resc, w=3.0), run(plain, w=3.0), atol=1e-3)


def test_dynamic_thresholding():
  big = 3.0 * jax.random.normal(jax.random.key(0), (6, 4, 4, 3))
  small = jnp.clip(big, -1.0, 1.0) * 0.999

  @jax.jit
  def check(big, small):
    return {
      p: (
        guidance.dynamic_threshold(big, p=p),
        guidance.dynamic_threshold(small, p=p),
        guidance.threshold(small, mode="dynamic", p=p),
      )
      for p in (0.9, 1.0)
    }

  for out_big, out_small, out_mode in check(big, small).values():
    assert float(jnp.max(jnp.abs(out_big))) <= 1.0 + 1e-6
    # Equals static (and the identity) when all |x̃| <= 1.
    np.testing.assert_array_equal(out_small, np.clip(small, -1.0, 1.0))
    np.testing.assert_array_equal(out_mode, small)
  # p = 1: s = max |x̃| per sample, so each sample is divided by its own max.
  s = np.max(np.abs(big), axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(check(big, small)[1.0][0], big / s, rtol=1e-6)


def test_thresholding_and_clip_x_interaction():
  assert sampling.SamplerConfig().effective_thresholding == "static"  # the old default
  assert sampling.SamplerConfig(clip_x=False).effective_thresholding == "none"
  assert sampling.SamplerConfig(clip_x=False, thresholding="dynamic").effective_thresholding == (
    "dynamic"
  )
  assert sampling.SamplerConfig(thresholding="none").effective_thresholding == "none"


# --- compile once, batch layout, numerics -------------------------------------------------------


@pytest.mark.parametrize("name", sampling.SAMPLERS)
def test_w_sweep_compiles_once_and_noise_independent_of_batch_layout(name):
  c = cfg(sampler=name, **ALL_OPTIONS)  # default noise (no z_init)
  outs = [run(c, w=w, z_init=None) for w in (0.0, 1.0, 3.0)]
  assert TRACES[c] == 1
  assert all(np.isfinite(o).all() and np.abs(o).max() <= 1.0 + 1e-6 for o in outs)
  assert not np.allclose(outs[0], outs[2])
  # Samples 4..7 in another batch layout (reversed, next to other ids, other w) are the same.
  ids = jnp.array([7, 6, 5, 4, 100, 101, 102, 103])
  y = jnp.concatenate([LABELS[4:][::-1], jnp.array([2, 2, 1, 0], jnp.int32)])
  w = jnp.array([0.0, 0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 8.0])
  x = run(c, w=w, ids=ids, labels=y, z_init=None)
  assert TRACES[c] == 1
  np.testing.assert_allclose(x[:4][::-1], outs[0][4:], rtol=1e-5, atol=1e-6)


# --- config plumbing -----------------------------------------------------------------------------


def test_sampler_config_from_config_and_describe():
  c = load_config("default")
  base = sampling.SamplerConfig.from_config(c)
  assert (base.sampler, base.guidance_interval, base.rescale_phi) == ("ancestral", None, 0.0)
  assert base.effective_thresholding == "static"
  with c.unlocked():
    c.sampling.sampler, c.sampling.eta = "ddim", 0.5
    c.sampling.guidance_interval = (-3.0, 2.5)
    c.sampling.rescale_phi, c.sampling.thresholding = 0.7, "dynamic"
    c.sampling.dynamic_threshold_p = 0.99
  s = sampling.SamplerConfig.from_config(c, num_steps=12)
  assert s == dataclasses.replace(
    base,
    num_steps=12,
    sampler="ddim",
    eta=0.5,
    guidance_interval=(-3.0, 2.5),
    rescale_phi=0.7,
    thresholding="dynamic",
    dynamic_threshold_p=0.99,
  )
  d = json.loads(json.dumps(s.describe()))
  assert d["sampler"] == "ddim" and d["guidance_interval"] == [-3.0, 2.5]
  assert d["thresholding"] == "dynamic" and d["network_evals"] == 12
  assert sampling.SamplerConfig(sampler="heun", num_steps=5).describe()["network_evals"] == 9


@pytest.mark.parametrize(
  "field,value",
  [
    ("sampler", "dpm"),
    ("eta", 1.5),
    ("guidance_interval", (2.0, -2.0)),
    ("guidance_interval", (1.0,)),
    ("rescale_phi", -0.1),
    ("thresholding", "soft"),
    ("dynamic_threshold_p", 0.0),
  ],
)
def test_bad_sampling_fields_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"sampling.{field}"):
    sampling.SamplerConfig(**{field: value})
  with pytest.raises(config_lib.ConfigError, match=f"sampling.{field}"):
    validation.validate(tiny_config(**{f"sampling.{field}": value}))
