"""Autoguidance (Karras et al. 2024): a guide equal to the main model is the conditional sampler
for every w and sampler (exactly); with the exact 2D mixture as the model and the same mixture
with a moved component as the guide, the guided ε is (1 + w) ε_main − w ε_guide of a float64
reference; a w sweep of two U-Nets compiles once; a bad guide is a clear config error; the CLI
evaluates and samples with a guide."""

import dataclasses
import functools
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib, guidance, models, sampling, sampling_runner, toy2d, validation
from tests import helpers
from tests.helpers import REPO, load_config, tiny_config

TOY = toy2d.default_toy()
# The guide's mixture: component 0 of class 0 moved by (−0.2, 0.1), class 2's weights 0.8 / 0.2.
GUIDE_TOY = toy2d.Toy2D(
  means=TOY.means + np.array([[-0.2, 0.1]] + [[0.0, 0.0]] * 6, np.float32),
  stds=TOY.stds,
  classes=TOY.classes,
  weights=np.array([0.6, 0.4, 0.5, 0.3, 0.2, 0.8, 0.2], np.float32),
  class_prior=TOY.class_prior,
)


def reference_eps(toy, z, logsnr, labels):
  """E[ε | z_λ, c] of a Gaussian mixture in float64 numpy: Σ_m r_m σ (z − α μ_m) / (α² s_m² + σ²)
  with r_m ∝ π_m N(z; α μ_m, (α² s_m² + σ²) I) over the components of class c."""
  out = np.zeros(z.shape)
  for i, (zi, lam, c) in enumerate(zip(z.astype(np.float64), logsnr, labels)):
    a2 = 1.0 / (1.0 + math.exp(-lam))
    alpha, sigma = math.sqrt(a2), math.sqrt(1.0 - a2)
    m = np.flatnonzero(toy.classes == c)
    var = a2 * toy.stds[m].astype(np.float64) ** 2 + sigma**2
    diff = zi - alpha * toy.means[m].astype(np.float64)
    log_r = np.log(toy.weights[m]) - 0.5 * np.sum(diff**2, 1) / var - np.log(var)
    r = np.exp(log_r - log_r.max())
    out[i] = np.sum((r / r.sum())[:, None] * sigma * diff / var[:, None], 0)
  return out


@functools.partial(jax.jit, static_argnums=0)
def guided_eps(interval, z, logsnr, labels, w):
  """ε̂ of `sampling.denoise` with the toy model and guide, no thresholding."""
  _, eps = sampling.denoise(
    toy2d.eps_fn(TOY),
    method=guidance.Autoguidance(),
    aux={"guide": toy2d.eps_fn(GUIDE_TOY)},
    z=z,
    logsnr=logsnr,
    labels=labels,
    w=w,
    null_label=TOY.null_label,
    config=sampling.SamplerConfig(thresholding="none", guidance_interval=interval),
  )
  return eps


def test_guided_eps_is_the_closed_form_of_main_and_guide():
  rs = np.random.RandomState(0)
  b = 12
  z = rs.uniform(-1.2, 1.2, (b, 2)).astype(np.float32)
  labels = np.arange(b) % TOY.num_classes
  w = np.linspace(0.0, 3.0, b).astype(np.float32)
  for logsnr in (-2.0, 0.5, 3.0):
    lam = np.full((b,), logsnr)
    want = (1 + w[:, None]) * reference_eps(TOY, z, lam, labels) - w[:, None] * reference_eps(
      GUIDE_TOY, z, lam, labels
    )
    for interval, inside in (((), True), ((-1.0, 1.0), -1.0 <= logsnr <= 1.0)):
      eps = guided_eps(interval, z, np.float32(logsnr), labels, w)
      expected = want if inside else reference_eps(TOY, z, lam, labels)  # outside: ε_main
      np.testing.assert_allclose(np.asarray(eps), expected, atol=2e-5, rtol=1e-4)
  # The guide differs where it should: near the moved component of class 0, not in class 1.
  lam = np.zeros(2)
  zz = np.array([[0.55, 0.35], [-0.55, 0.35]])
  gap = reference_eps(TOY, zz, lam, [0, 1]) - reference_eps(GUIDE_TOY, zz, lam, [0, 1])
  assert np.abs(gap[0]).max() > 0.05 and np.abs(gap[1]).max() < 1e-6


@pytest.mark.parametrize("name", ["ancestral", "heun"])  # heun: two evaluations per step
def test_guide_equal_to_main_is_the_conditional_sampler_for_every_w(name):
  n = 48
  kw = dict(
    rng=jax.random.key(3),
    sample_ids=jnp.arange(n),
    labels=jnp.arange(n) % TOY.num_classes,
    shape=(2,),
    null_label=TOY.null_label,
  )
  base = sampling.SamplerConfig(num_steps=12, sampler=name, eta=0.5, guidance_interval=(-5, 5))
  eps = toy2d.eps_fn(TOY)
  cond = sampling.sample(eps, w=0.0, config=dataclasses.replace(base, guided=False), **kw)
  w = jnp.asarray(np.resize([0.0, 0.5, 1.0, 3.0, 8.0], n), jnp.float32)
  auto = sampling.sample(
    eps, method=guidance.Autoguidance(), aux={"guide": eps}, w=w, config=base, **kw
  )
  np.testing.assert_array_equal(np.asarray(auto), np.asarray(cond))
  assert np.isfinite(np.asarray(auto)).all()


def random_params(model, shape, seed):
  """Params of `model` with every leaf random (a zero-initialised output conv gives ε = 0), from
  numpy: nothing is compiled."""
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros(1), jnp.zeros(1, int), train=False
    )["params"]
  )
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda a: jnp.asarray(0.1 * rs.randn(*a.shape), jnp.float32), shapes)


@pytest.mark.slow  # two U-Net sampler compiles
def test_sweep_of_two_unets_compiles_once_and_w0_ignores_the_guide():
  config = tiny_config()
  with config.unlocked():
    config.model.update(ch=8, ch_mult=(1,), attn_resolutions=(), head_channels=8)
  guide_config = tiny_config()
  with guide_config.unlocked():
    guide_config.model.update(ch=4, ch_mult=(1,), attn_resolutions=(), head_channels=4)
  shape, calls = (8, 8, 1), {"main": 0, "guide": 0}

  def counting(name, apply_fn):
    def apply(*args, **kwargs):
      calls[name] += 1  # once per trace
      return apply_fn(*args, **kwargs)

    return apply

  params = [
    random_params(models.create_model(c), shape, seed)
    for seed, c in enumerate((config, guide_config))
  ]
  main_model, guide_model = models.create_model(config), models.create_model(guide_config)
  scfg = sampling.SamplerConfig(num_steps=4)
  sampler = sampling_runner.make_sampler(
    counting("main", main_model.apply),
    shape=shape,
    null_label=10,
    config=scfg,
    method=guidance.Autoguidance(),
    networks={
      "guide": sampling_runner.model_network(counting("guide", guide_model.apply), params[1])
    },
  )
  labels = np.arange(6) % 10
  xs = {
    w: sampling_runner.generate(
      sampler, params[0], jax.random.key(0), labels=labels, w=w, batch_size=6
    )
    for w in (0.0, 1.0, 3.0)
  }
  assert calls == {"main": 1, "guide": 1}  # one trace for the whole sweep
  assert np.abs(xs[3.0] - xs[0.0]).max() > 1e-3  # the guide changes the samples
  conditional = sampling_runner.make_sampler(
    main_model.apply,
    shape=shape,
    null_label=10,
    config=sampling.SamplerConfig(num_steps=4, guided=False),
  )
  x_cond = sampling_runner.generate(
    conditional, params[0], jax.random.key(0), labels=labels, w=0.0, batch_size=6
  )
  np.testing.assert_allclose(xs[0.0], x_cond, atol=1e-5)


# --- config validation: before any compile ------------------------------------------------------


def auto_config(**autoguidance_fields):
  c = load_config("digits")
  c.evaluation.guidance = "auto"
  c.autoguidance.update(autoguidance_fields)
  return c


def test_autoguidance_without_a_guide_workdir_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match="autoguidance.workdir is empty"):
    validation.validate(auto_config())
  c = load_config("digits")
  c.sampling.guidance = "auto"  # --mode=sample checks the same guide
  with pytest.raises(config_lib.ConfigError, match="autoguidance.workdir is empty"):
    validation.validate(c)
  validation.validate(load_config("digits"))  # cfg needs no guide


def test_guide_without_checkpoint_or_of_other_data_is_a_config_error(tmp_path):
  c = auto_config(workdir=str(tmp_path), config=os.path.join(REPO, "configs", "mnist.py"))
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(c)
  msg = str(e.value)
  assert "holds no checkpoint" in msg and "--mode=train" in msg
  assert "data.name='mnist'" in msg and "data.image_size=28" in msg
  c = auto_config(workdir=str(tmp_path), config=str(tmp_path / "nope.py"))
  with pytest.raises(config_lib.ConfigError, match="autoguidance.config=.*does not load"):
    validation.validate(c)
  c = load_config("digits")
  c.sampling.guidance = "autoguidance"
  with pytest.raises(config_lib.ConfigError, match="sampling.guidance='autoguidance' is not a"):
    validation.validate(c)


def test_guide_config_with_a_bad_model_is_a_config_error(tmp_path):
  path = tmp_path / "guide.py"
  path.write_text(
    "import runpy\n"
    f"def get_config(arg=None):\n"
    f"  c = runpy.run_path({os.path.join(REPO, 'configs', 'digits_guide.py')!r})['get_config']()\n"
    "  c.model.ch_mult = (1, 2, 2, 2, 2)\n"  # 8x8 images cannot be halved 4 times
    "  return c\n"
  )
  (tmp_path / "checkpoints").mkdir()
  c = auto_config(workdir=str(tmp_path), config=str(path))
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(c)
  assert "holds no checkpoint" in str(e.value)
  assert re.search(
    "autoguidance.config: .*cannot be halved 4 times for model.ch_mult", str(e.value)
  )


# --- the CLI ------------------------------------------------------------------------------------

TINY = [
  "--config.training.batch_size=16",
  "--config.training.num_train_steps=4",
  "--config.training.checkpoint_every_steps=2",
  "--config.training.grid_samples_per_class=1",
  "--config.evaluation.judge_num_samples=0",
  "--config.sampling.num_steps=4",
]


run_cli = functools.partial(helpers.run_cli, tiny=TINY)


@pytest.mark.slow
def test_cli_evaluates_and_samples_with_an_earlier_checkpoint_as_guide(trained_copy):
  workdir = trained_copy  # trained 4 steps, checkpoints 2 and 4
  guide = [f"--config.autoguidance.workdir={workdir}", "--config.autoguidance.checkpoint_step=2"]
  bad = run_cli(
    workdir,
    "--mode=evaluate",
    "--config.evaluation.guidance=auto",
    f"--config.autoguidance.workdir={workdir}",
    "--config.autoguidance.checkpoint_step=3",
    check=False,
  )
  assert bad.returncode != 0 and "holds steps [2, 4]" in bad.stderr
  run_cli(
    workdir,
    "--mode=evaluate",
    "--config.evaluation.guidance=auto",
    "--config.evaluation.w_values=(0.,2.)",
    "--config.evaluation.num_samples=20",
    "--config.evaluation.batch_size=20",
    "--config.evaluation.reference_num_examples=200",
    *guide,
  )
  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["step"], r["guidance"], r["w"]) for r in rows] == [(4, "auto", 0.0), (4, "auto", 2.0)]
  settings = json.loads(rows[0]["sampler_settings"])
  assert settings["autoguidance"]["checkpoint_step"] == 2 and settings["guided"]
  assert all(np.isfinite(r["fd"]) for r in rows)
  assert os.path.exists(os.path.join(workdir, "eval", "tradeoff_ag_step4_T4.png"))
  sampled = run_cli(
    workdir,
    "--mode=sample",
    "--config.sampling.guidance=auto",
    "--config.sampling.num_samples=10",
    *guide,
  )
  done = [line for line in sampled.stderr.splitlines() if "Done:" in line]
  assert len(done) == 1 and "auto_w*.png" in done[0], done  # the files it wrote, by name
  with np.load(os.path.join(workdir, "sample", "step_00000004", "auto_samples.npz")) as f:
    assert f["images"].shape == (3, 10, 8, 8, 1)
    assert json.loads(str(f["sampler_settings"]))["autoguidance"]["checkpoint_step"] == 2
