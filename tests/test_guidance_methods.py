"""Guidance since the paper (CFG++, APG, CFG-Zero*, ICG, w schedules) against known answers: each
reduces to classifier-free guidance at its neutral settings, and each one's own effect equals an
independent float64 computation of its paper's formula on the exact 2D mixture."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import guidance, sampling, sampling_runner, toy2d, validation
from cfg_jax.guidance import schedule as schedule_lib
from tests.helpers import load_config

TOY = toy2d.default_toy()
K = TOY.num_classes
EPS = toy2d.eps_fn(TOY)
N = 24
LABELS = np.resize(np.arange(K), N).astype(np.int32)


def toy_apply(variables, z, logsnr, labels, *, train):
  del variables, train
  return EPS(z, logsnr, labels)


def draw(method, *, sampler="ancestral", w=2.0, num_steps=10, interval=None):
  config = sampling.SamplerConfig(num_steps=num_steps, sampler=sampler, guidance_interval=interval)
  f = sampling_runner.make_sampler(
    toy_apply, shape=(2,), null_label=K, config=config, method=method
  )
  return sampling_runner.generate(f, {}, jax.random.key(0), labels=LABELS, w=w, batch_size=N)


def reference_eps(z, logsnr, labels):
  """E[ε | z_λ, c] of the mixture in float64 numpy (label K = ∅: the class mixture)."""
  out = np.zeros(z.shape)
  for i, (zi, lam, c) in enumerate(zip(np.asarray(z, np.float64), logsnr, labels)):
    a2 = 1.0 / (1.0 + math.exp(-lam))
    alpha, sigma = math.sqrt(a2), math.sqrt(1.0 - a2)
    comps = np.flatnonzero(TOY.classes == c) if c < K else np.arange(len(TOY.classes))
    weight = TOY.weights[comps] * (1.0 if c < K else TOY.class_prior[TOY.classes[comps]])
    var = a2 * TOY.stds[comps].astype(np.float64) ** 2 + sigma**2
    diff = zi - alpha * TOY.means[comps].astype(np.float64)
    log_r = np.log(weight) - 0.5 * np.sum(diff**2, 1) / var - np.log(var)
    r = np.exp(log_r - log_r.max())
    out[i] = np.sum((r / r.sum())[:, None] * sigma * diff / var[:, None], 0)
  return out


def step_inputs(lam, *, w, seed=0, step=0):
  z = np.random.RandomState(seed).uniform(-1.2, 1.2, (N, 2)).astype(np.float32)
  keys = sampling.per_sample_keys(jax.random.key(5), jnp.arange(N))
  return guidance.Step(
    z=jnp.asarray(z),
    logsnr=jnp.full((N,), lam, jnp.float32),
    labels=jnp.asarray(LABELS),
    w=jnp.full((N,), w, jnp.float32),
    null_label=K,
    step=step,
    keys=keys,
  )


def alpha_sigma64(lam):
  a2 = 1.0 / (1.0 + math.exp(-lam))
  return math.sqrt(a2), math.sqrt(1.0 - a2)


# --- neutral settings are classifier-free guidance ------------------------------------------------


NEUTRAL = {
  "cfg_zero": guidance.CFGZeroStar(zero_steps=0, optimized_scale=False),
  "cfg_schedule": guidance.ScheduledCFG(shape="constant"),
  "icg": guidance.ICG(condition="null"),
}


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_neutral_settings_are_bit_equal_to_cfg(sampler):
  want = draw(guidance.CFG, sampler=sampler, num_steps=6)
  for name, method in NEUTRAL.items():
    np.testing.assert_array_equal(draw(method, sampler=sampler, num_steps=6), want, err_msg=name)


def test_neutral_settings_are_bit_equal_to_cfg_inside_a_guidance_interval():
  want = draw(guidance.CFG, num_steps=6, interval=(-3.0, 3.0))
  for name, method in NEUTRAL.items():
    got = draw(method, num_steps=6, interval=(-3.0, 3.0))
    np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_apg_with_eta_1_no_threshold_no_momentum_is_cfg_on_x(sampler):
  got = draw(guidance.APG(eta=1.0), sampler=sampler, num_steps=6)
  want = draw(guidance.CFG, sampler=sampler, num_steps=6)
  np.testing.assert_allclose(got, want, atol=2e-6)  # x̃ formed on x̂ instead of ε: float only


def test_cfgpp_at_l0_is_unconditional_ddim():
  got = draw(guidance.CFGPlusPlus(), sampler="ddim", w=0.0)
  want = draw(guidance.CFG, sampler="ddim", w=-1.0)  # w = −1: ε(z, ∅)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.abs(draw(guidance.CFGPlusPlus(), sampler="ddim", w=0.6) - want).max() > 0.1


# --- each method's own effect against its paper's formula in float64 --------------------------


def test_cfgpp_step_renoises_with_the_unconditional_eps():
  lam, lam_next, l = -1.0, 0.5, 0.6
  s = step_inputs(lam, w=l)
  config = sampling.SamplerConfig(num_steps=8, sampler="ddim", thresholding="none")
  x, eps, _ = sampling.denoise_step(
    EPS,
    z=s.z,
    logsnr=lam,
    labels=s.labels,
    w=s.w,
    null_label=K,
    config=config,
    method=guidance.CFGPlusPlus(),
  )
  z_next = sampling.ddim_step(x=x, eps=eps, logsnr=lam, logsnr_next=lam_next, eta=0.0)
  z = np.asarray(s.z, np.float64)
  eps_c = reference_eps(z, [lam] * N, LABELS)
  eps_u = reference_eps(z, [lam] * N, [K] * N)
  (a, sg), (a1, s1) = alpha_sigma64(lam), alpha_sigma64(lam_next)
  x_l = (z - sg * (eps_u + l * (eps_c - eps_u))) / a  # CFG++: x̂ at ε_∅ + l (ε_c − ε_∅)
  np.testing.assert_allclose(np.asarray(z_next), a1 * x_l + s1 * eps_u, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(eps), eps_u, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eta,threshold,momentum", [(0.0, 0.0, 0.0), (0.3, 0.5, -0.5)])
def test_apg_is_the_projected_update_of_the_paper(eta, threshold, momentum):
  lam, w = 0.5, 2.0
  s = step_inputs(lam, w=w)
  method = guidance.APG(eta=eta, norm_threshold=threshold, momentum=momentum)
  previous = np.random.RandomState(1).normal(0, 0.3, (N, 2)).astype(np.float32)
  pred, state = method.guided(EPS, {}, s, jnp.asarray(previous))
  z = np.asarray(s.z, np.float64)
  a, sg = alpha_sigma64(lam)
  x_c = (z - sg * reference_eps(z, [lam] * N, LABELS)) / a
  x_u = (z - sg * reference_eps(z, [lam] * N, [K] * N)) / a
  d = (x_c - x_u) + momentum * previous  # running average v_t = Δ_t + β v_{t−1}
  np.testing.assert_allclose(np.asarray(state), d, rtol=1e-4, atol=1e-5)
  if threshold:
    d = d * np.minimum(1.0, threshold / np.linalg.norm(d, axis=1, keepdims=True))
  unit = x_c / np.linalg.norm(x_c, axis=1, keepdims=True)
  par = np.sum(d * unit, 1, keepdims=True) * unit
  want = x_c + w * ((d - par) + eta * par)
  np.testing.assert_allclose(np.asarray(pred.x), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(pred.eps), (z - a * want) / sg, rtol=1e-3, atol=1e-3)
  # η = 0 keeps no part of the update along x̂_c: (x̃ − x̂_c) ⟂ x̂_c.
  if eta == 0.0:
    assert np.abs(np.sum((np.asarray(pred.x) - x_c) * x_c, 1)).max() < 1e-4


def test_cfg_zero_star_scale_and_zero_init():
  lam, w = -0.5, 1.5
  s = step_inputs(lam, w=w)
  pred, _ = guidance.CFGZeroStar().guided(EPS, {}, s, ())
  z = np.asarray(s.z, np.float64)
  e_c, e_u = reference_eps(z, [lam] * N, LABELS), reference_eps(z, [lam] * N, [K] * N)
  s_star = np.sum(e_c * e_u, 1, keepdims=True) / np.sum(e_u**2, 1, keepdims=True)
  np.testing.assert_allclose(
    np.asarray(pred.eps), (1 + w) * e_c - w * s_star * e_u, rtol=1e-4, atol=1e-5
  )
  assert not np.allclose(s_star, 1.0, atol=1e-2)  # the scale does something here
  # Zero-init: x̃ = 0 and ε̂ = z/σ for the first K steps, the formula after.
  method = guidance.CFGZeroStar(zero_steps=2)
  early, _ = method.guided(EPS, {}, s._replace(step=1), ())
  late, _ = method.guided(EPS, {}, s._replace(step=2), ())
  np.testing.assert_array_equal(np.asarray(early.x), 0.0)
  np.testing.assert_allclose(np.asarray(early.eps), z / alpha_sigma64(lam)[1], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(late.eps), np.asarray(pred.eps), rtol=1e-6)
  # Under DDIM (η = 0) the first K steps only rescale the noise: z_K = (σ_K / σ_0) z_0.
  config = sampling.SamplerConfig(num_steps=6, sampler="ddim", thresholding="none")
  grid = np.asarray(config.logsnrs(), np.float64)
  z0 = np.random.RandomState(2).normal(size=(N, 2)).astype(np.float32)
  zk = jnp.asarray(z0)
  for t in range(2):
    x, eps, _ = sampling.denoise_step(
      EPS,
      z=zk,
      logsnr=grid[t],
      labels=s.labels,
      w=s.w,
      null_label=K,
      config=config,
      method=method,
      step=t,
    )
    zk = sampling.ddim_step(x=x, eps=eps, logsnr=grid[t], logsnr_next=grid[t + 1], eta=0.0)
  ratio = alpha_sigma64(grid[2])[1] / alpha_sigma64(grid[0])[1]
  np.testing.assert_allclose(np.asarray(zk), ratio * z0, rtol=1e-5, atol=1e-6)


def test_icg_draws_uniform_independent_conditions_and_guides_against_them():
  keys = sampling.per_sample_keys(jax.random.key(9), jnp.arange(30_000))
  draws = np.asarray(guidance.icg.random_conditions(keys, 3, K))
  counts = np.bincount(draws, minlength=K)
  assert draws.min() >= 0 and draws.max() < K  # never ∅
  chi2 = np.sum((counts - len(draws) / K) ** 2 / (len(draws) / K))
  assert chi2 < 13.8, counts  # χ²(2 dof) 99.9% quantile: uniform
  other_step = np.asarray(guidance.icg.random_conditions(keys, 4, K))
  assert abs(np.mean(draws == other_step) - 1 / K) < 0.02  # fresh draws every step
  lam, w = 0.0, 2.0
  s = step_inputs(lam, w=w, step=3)
  pred, _ = guidance.ICG().guided(EPS, {}, s, ())
  c_tilde = np.asarray(guidance.icg.random_conditions(s.keys, 3, K))
  z = np.asarray(s.z, np.float64)
  want = (1 + w) * reference_eps(z, [lam] * N, LABELS) - w * reference_eps(z, [lam] * N, c_tilde)
  np.testing.assert_allclose(np.asarray(pred.eps), want, rtol=1e-4, atol=1e-5)


def test_w_schedule_shapes_progress_and_mean():
  config = sampling.SamplerConfig(num_steps=9)
  grid = config.logsnrs()
  s = schedule_lib.progress(grid, variable="step", logsnr_min=-20.0, logsnr_max=20.0)
  np.testing.assert_allclose(np.asarray(s), np.arange(9) / 8, atol=1e-5)  # t / (T − 1)
  s = schedule_lib.progress(grid, variable="logsnr", logsnr_min=-20.0, logsnr_max=20.0)
  np.testing.assert_allclose(np.asarray(s), (np.asarray(grid) + 20) / 40, atol=1e-6)
  u = np.linspace(0, 1, 200_001)
  for shape in schedule_lib.SHAPES:
    f = np.asarray(schedule_lib.weight(jnp.asarray(u), shape=shape))
    assert abs(f.mean() - 1.0) < 1e-4, shape  # w stays the average strength
  np.testing.assert_allclose(
    schedule_lib.weight(jnp.asarray([0.0, 0.5, 1.0]), shape="cosine"), [0, 1, 2], atol=1e-6
  )
  # At λ with progress s, the scheduled ε̃ is classifier-free guidance at w f(s).
  lam, w = float(grid[6]), 2.0
  step = step_inputs(lam, w=w)
  pred, _ = guidance.ScheduledCFG(shape="linear").guided(EPS, {}, step, ())
  w_t = w * 2 * (6 / 8)
  z = np.asarray(step.z, np.float64)
  want = (1 + w_t) * reference_eps(z, [lam] * N, LABELS) - w_t * reference_eps(
    z, [lam] * N, [K] * N
  )
  np.testing.assert_allclose(np.asarray(pred.eps), want, rtol=1e-4, atol=1e-4)


def test_a_strength_sweep_compiles_once_for_a_method_with_state():
  traces = []

  def counting(variables, z, logsnr, labels, *, train):
    traces.append(1)
    return EPS(z, logsnr, labels)

  config = sampling.SamplerConfig(num_steps=6)
  f = sampling_runner.make_sampler(
    counting, shape=(2,), null_label=K, config=config, method=guidance.APG(momentum=-0.5)
  )
  xs = [
    sampling_runner.generate(f, {}, jax.random.key(0), labels=LABELS, w=w, batch_size=N)
    for w in (0.0, 1.0, 4.0)
  ]
  assert len(traces) == 1 and np.abs(xs[2] - xs[0]).max() > 1e-2


# --- config -----------------------------------------------------------------------------------


def test_every_method_validates_in_both_sections_and_bad_fields_are_named():
  for name in guidance.METHODS:
    if name in ("auto", "classifier"):  # they need networks on disk (their own tests)
      continue
    c = load_config("digits")
    c.evaluation.guidance = c.sampling.guidance = name
    if name == "cfgpp":
      c.sampling.sampler = "ddim"
      c.sampling.w_values = (0.2, 0.6)
    validation.validate(c, num_devices=8)
  c = load_config("digits")
  c.evaluation.guidance = "cfgpp"
  c.apg.eta, c.cfg_zero.zero_steps = -1.0, -2  # not selected: not checked
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(c, num_devices=8)
  assert "sampling.sampler=ddim" in str(e.value) and "apg.eta" not in str(e.value)
  c.sampling.sampler, c.evaluation.guidance, c.sampling.guidance = "ddim", "apg", "cfg_zero"
  c.apg.momentum, c.cfgpp.scales = 1.0, (-0.5,)
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(c, num_devices=8)
  for field in ("apg.eta", "apg.momentum", "cfg_zero.zero_steps"):
    assert field in str(e.value), (field, str(e.value))
  c = load_config("digits")
  c.sampling.guidance, c.sampling.sampler, c.sampling.w_values = "cfgpp", "ddim", (-0.5,)
  with pytest.raises(validation.ConfigError, match=r"CFG\+\+'s l must be"):
    validation.validate(c, num_devices=8)


def test_results_columns_and_tags_of_each_method():
  assert {n: (m.strength_field, m.tag) for n, m in guidance.METHODS.items()} == {
    "cfg": ("w", ""),
    "classifier": ("scale", "classifier_guidance"),
    "auto": ("w", "autoguidance"),
    "cfgpp": ("scale", "cfgpp"),
    "apg": ("w", "apg"),
    "cfg_zero": ("w", "cfg_zero"),
    "icg": ("w", "icg"),
    "cfg_schedule": ("w", "cfg_schedule"),
  }
  prefixes = [m.file_prefix for n, m in guidance.METHODS.items() if n != "cfg"]
  assert len(set(prefixes)) == len(prefixes) and "" not in prefixes  # no file overwrites another


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_evaluates_and_samples_with_the_new_methods(trained_copy):
  import json
  import os

  from tensorboard.backend.event_processing import event_accumulator

  from tests.helpers import run_cli

  workdir = trained_copy  # trained 4 steps
  run_cli(
    workdir,
    "--mode=evaluate",
    "--config.evaluation.guidance=apg",
    "--config.apg.momentum=-0.5",
    "--config.evaluation.w_values=(0.,2.)",
    "--config.evaluation.num_samples=20",
    "--config.evaluation.batch_size=20",
    "--config.evaluation.reference_num_examples=200",
  )
  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["guidance"], r["w"]) for r in rows] == [("apg", 0.0), ("apg", 2.0)]
  assert json.loads(rows[0]["sampler_settings"])["apg"] == {
    "eta": 0.0,
    "norm_threshold": 0.0,
    "momentum": -0.5,
  }
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "eval"))
  acc.Reload()
  assert "eval/apg/T4/fd/w=2" in acc.Tags()["tensors"]
  assert os.path.exists(os.path.join(workdir, "eval", "tradeoff_apg_step4_T4.png"))
  proc = run_cli(
    workdir,
    "--mode=sample",
    "--config.sampling.guidance=cfgpp",
    "--config.sampling.sampler=ddim",
    "--config.sampling.w_values=(0.,0.6)",
  )
  with np.load(os.path.join(workdir, "sample", "step_00000004", "cfgpp_samples.npz")) as f:
    assert f["images"].shape == (2, 12, 8, 8, 1)
    assert json.loads(str(f["sampler_settings"]))["sampler"] == "ddim"
  assert "cfgpp_w*.png" in proc.stderr
  bad = run_cli(workdir, "--mode=sample", "--config.sampling.guidance=cfgpp", check=False)
  assert bad.returncode == 1 and "sampling.sampler=ddim" in bad.stderr
