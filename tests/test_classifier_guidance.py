"""Classifier guidance (Dhariwal & Nichol 2021): the noise-conditional classifier trains, the
guidance term is exactly σ ∇ log p(c | z), scale 0 is the model, the exact-score mixture with its
exact classifier recovers the conditional distribution (Bayes) under every sampler and scale > 1
separates the classes, and the CLI trains on the digits pipeline (its loss falls), logs to
TensorBoard and writes a checkpoint that loads."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import (
  guidance,
  models,
  sampling,
  sampling_runner,
  schedules,
  sharding,
  toy2d,
  train_state,
)
from cfg_jax.guidance import classifier as cg
from cfg_jax.jobs import train_classifier
from tests import helpers
from tests.helpers import class_separation_and_spread, load_config, mixture_moment_error

TOY = toy2d.default_toy()
K = TOY.num_classes
TOY_EPS = toy2d.eps_fn(TOY)
N = 1500  # 500 per class
LABELS = np.arange(N) % K


def toy_apply(variables, z, logsnr, labels, *, train):
  """The mixture's exact ε as a Flax-style apply function (the "diffusion model")."""
  del variables, train
  return TOY_EPS(z, logsnr, labels)


def toy_classifier_apply(variables, z, logsnr, *, train):
  """The mixture's exact log p(c | z, λ) up to a constant: log p_λ(z | c) + log p(c), [B, K]."""
  del variables, train
  full = lambda c: jnp.full(z.shape[:1], c, jnp.int32)
  log_lik = jnp.stack(
    [toy2d.log_prob(TOY, z=z, logsnr=logsnr, labels=full(c)) for c in range(K)], axis=-1
  )
  return log_lik + jnp.log(jnp.asarray(TOY.class_prior))


def tiny_classifier_config(**overrides):
  """The digits config with a tiny classifier section (one 8×8 level: fast to compile)."""
  c = load_config("digits")
  c.classifier.update(
    {
      **dict(
        ch=8,
        ch_mult=(1,),
        attn_resolutions=(),
        head_channels=8,
        num_groups=4,
        batch_size=32,
        learning_rate=5e-3,
      ),
      **overrides,
    }
  )
  return c


def _random_params(model):
  """Params of `model` with every leaf random (the zero-initialised head would make ∇ log p = 0);
  from numpy, so nothing is compiled."""
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), train=False)["params"],
    jax.random.key(0),
  )
  rs = np.random.RandomState(0)
  return jax.tree.map(lambda a: jnp.asarray(0.3 * rs.randn(*a.shape), jnp.float32), shapes)


# --- the guidance term ----------------------------------------------------------------------------


def test_guidance_term_is_sigma_times_grad_log_softmax():
  b, shape = 6, (3, 3, 2)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  w1 = jax.random.normal(k1, (9 * 2, 16))
  w2 = jax.random.normal(k2, (16, K))

  def toy_clf(variables, z, logsnr, *, train):  # a nonlinear λ-dependent toy classifier
    del variables, train
    return jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2 * (1.0 + 0.1 * logsnr)[:, None]

  def model_eps(z, logsnr, labels):  # reveals the labels it was given
    return 0.5 * z + labels.astype(jnp.float32)[:, None, None, None]

  def grad_log_softmax(zi, li, yi):  # ∇_z log softmax(logits)[y] of one example, by jax.grad
    return jax.grad(
      lambda zi: jax.nn.log_softmax(toy_clf(None, zi[None], li[None], train=False))[0, yi]
    )(zi)

  z = jax.random.normal(k3, (b, *shape))
  lam = jnp.array([-8.0, -2.0, 0.0, 1.5, 4.0, 12.0])
  y = jnp.array([0, 2, K, 1, 0, K], jnp.int32)  # two ∅ rows
  s = jnp.array([1.0, 2.5, 3.0, 0.5, 4.0, 1.0])

  @jax.jit
  def run(z, lam, y, s):
    """ε̂ and ε_θ for 'cond' and 'null', and s σ ∇ log p by per-example jax.grad."""
    guided = [
      cg.classifier_guided_eps_fn(model_eps, toy_clf, None, scale=s, model_labels=m)(z, lam, y)
      for m in cg.MODEL_LABELS
    ]
    bases = [model_eps(z, lam, y), model_eps(z, lam, jnp.full_like(y, K))]
    _, sigma = schedules.alpha_sigma(lam)
    grads = jax.vmap(grad_log_softmax)(z, lam, jnp.minimum(y, K - 1))
    return guided, bases, (s * sigma)[:, None, None, None] * grads

  guided, bases, expected_term = run(z, lam, y, s)
  real = np.asarray(y < K)
  for eps_hat, base in zip(guided, bases):
    np.testing.assert_allclose(eps_hat[real], (base - expected_term)[real], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eps_hat[~real], base[~real])  # ∅ rows: ε_θ(z, ∅), no term
    assert np.all(np.abs(np.asarray(eps_hat - base))[real].max(axis=(1, 2, 3)) > 1e-4)


def test_scale_zero_is_the_model_and_the_flax_classifier_is_per_row():
  model = models.create_classifier(tiny_classifier_config(num_res_blocks=0))
  params = _random_params(model)
  model_eps = lambda z, logsnr, labels: jnp.sin(z) * (1.0 + labels[:, None, None, None])
  logits_fn = cg.classifier_logits_fn(model.apply, params)

  @jax.jit
  def run(z, lam, y, scale):
    eps_fn = cg.classifier_guided_eps_fn(model_eps, model.apply, params, scale=scale, null_label=10)
    return eps_fn(z, lam, y), logits_fn(z, lam)

  z = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
  lam, y = jnp.array([-3.0, 0.0, 2.0, 6.0]), jnp.array([1, 7, 10, 3], jnp.int32)
  eps0, logits = run(z, lam, y, jnp.zeros(4))
  np.testing.assert_array_equal(eps0, model_eps(z, lam, y))  # scale 0: exactly ε_θ
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  # ε̂ is affine in the per-sample scale, with a nonzero term except on the ∅ row (y = 10).
  term1 = eps0 - run(z, lam, y, jnp.ones(4))[0]
  term2 = eps0 - run(z, lam, y, jnp.array([2.0, 2.0, 2.0, 2.0]))[0]
  np.testing.assert_allclose(term2, 2.0 * term1, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(term1)).max(axis=(1, 2, 3)).tolist()[2] == 0.0
  assert np.all(np.abs(np.asarray(term1[np.array([0, 1, 3])])).max(axis=(1, 2, 3)) > 1e-5)
  # No cross-example terms, so ∇ of Σ_i log p_i is each row's own gradient: changing row 0's z
  # and λ changes row 0's logits only. The classifier depends on λ.
  moved = run(z.at[0].add(1.0), lam.at[0].add(1.0), y, jnp.zeros(4))[1]
  np.testing.assert_allclose(moved[1:], logits[1:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(moved[0], logits[0])
  assert not np.allclose(run(z, lam + 1.0, y, jnp.zeros(4))[1], logits)


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="model_labels"):
    cg.classifier_guided_eps_fn(
      TOY_EPS, toy_classifier_apply, None, scale=1.0, model_labels="uncond"
    )
  f = cg.classifier_guided_eps_fn(TOY_EPS, toy_classifier_apply, None, scale=jnp.ones(3))
  with pytest.raises(ValueError, match="one scale per sample"):
    f(jnp.zeros((6, 2)), jnp.zeros(6), jnp.zeros(6, jnp.int32))
  f = cg.classifier_guided_eps_fn(TOY_EPS, toy_classifier_apply, None, scale=1.0, null_label=7)
  with pytest.raises(ValueError, match="null_label"):
    f(jnp.zeros((2, 2)), jnp.zeros(2), jnp.zeros(2, jnp.int32))


# --- the exact-score mixture: Bayes ---------------------------------------------------------------


def test_exact_classifier_on_unconditional_eps_is_the_conditional_eps():
  # ∇ log p(z | c) = ∇ log p(z) + ∇ log p(c | z): ε_∅ − σ ∇ log p(c | z) = ε_c at every λ.
  lam = jnp.repeat(jnp.array([-20.0, -6.0, -1.0, 0.0, 2.0, 5.0, 10.0, 20.0]), 12)
  z = jax.random.normal(jax.random.key(3), (lam.shape[0], 2))
  z = z * jnp.where(lam < 5, 1.0, 0.6)[:, None]
  y = jnp.tile(jnp.arange(K, dtype=jnp.int32), lam.shape[0] // K)
  f = jax.jit(
    cg.classifier_guided_eps_fn(
      TOY_EPS, toy_classifier_apply, None, scale=1.0, model_labels="null", null_label=K
    )
  )
  np.testing.assert_allclose(f(z, lam, y), jax.jit(TOY_EPS)(z, lam, y), rtol=1e-4, atol=2e-4)


CALLS: dict[tuple[str, int], int] = {}  # Python calls of the classifier: counts traces


@functools.cache
def _cg_sampler(name: str, mesh_devices: int = 0):
  """The one sampler factory with classifier guidance on the mixture: the exact unconditional ε
  ('null') and the exact classifier; the strength slot carries a per-sample scale."""
  config = sampling.SamplerConfig(num_steps=64, sampler=name, thresholding="none")
  mesh = sharding.make_mesh(mesh_devices) if mesh_devices else None

  def counted(*args, **kwargs):
    CALLS[(name, mesh_devices)] = CALLS.get((name, mesh_devices), 0) + 1
    return toy_classifier_apply(*args, **kwargs)

  return sampling_runner.make_sampler(
    toy_apply,
    shape=(2,),
    null_label=K,
    config=config,
    method=guidance.ClassifierGuidance(model_labels="null"),
    networks={"classifier": sampling_runner.classifier_network(counted, {})},
    mesh=mesh,
  )


def draw_cg(name: str, scale: float, mesh_devices: int = 0) -> np.ndarray:
  f = _cg_sampler(name, mesh_devices)
  x = np.asarray(
    f(
      {},
      jax.random.key(0),
      jnp.arange(N),
      jnp.asarray(LABELS, jnp.int32),
      jnp.full((N,), scale, jnp.float32),
    )
  )
  assert np.isfinite(x).all()
  return x


def draw_conditional(name: str) -> np.ndarray:
  """The exact conditional model, same noise (w = 0, conditional half only)."""
  config = sampling.SamplerConfig(num_steps=64, sampler=name, thresholding="none", guided=False)
  f = jax.jit(
    lambda ids, y: sampling.sample(
      TOY_EPS,
      rng=jax.random.key(0),
      sample_ids=ids,
      labels=y,
      w=0.0,
      shape=(2,),
      null_label=K,
      config=config,
    )
  )
  return np.asarray(f(jnp.arange(N), jnp.asarray(LABELS, jnp.int32)))


def moment_error(x: np.ndarray) -> float:
  """helpers.mixture_moment_error on this module's mixture (exact samples of this size: ~0.15)."""
  return mixture_moment_error(TOY, x, LABELS)


@pytest.mark.parametrize("name", sampling.SAMPLERS)
def test_scale_one_on_the_unconditional_model_recovers_the_conditional(name):
  x = draw_cg(name, 1.0)
  assert moment_error(x) < 0.4, moment_error(x)
  # Same noise as the exact conditional sampler: the same samples up to float error.
  ref = draw_conditional(name)
  assert np.median(np.abs(x - ref)) < 1e-3, np.median(np.abs(x - ref))
  assert np.mean(np.all(np.abs(x - ref) < 1e-2, axis=1)) > 0.98


@pytest.mark.parametrize("name,mesh_devices", [("ancestral", 2), ("ddim", 0)])
def test_larger_scale_separates_classes_and_a_sweep_compiles_once(name, mesh_devices):
  dist, spread = [], []
  for scale in (1.0, 2.0, 4.0):
    x = draw_cg(name, scale, mesh_devices)
    if scale == 1.0:
      calls = CALLS[(name, mesh_devices)]
    d, s = class_separation_and_spread(TOY, x, LABELS)
    dist.append(d)
    spread.append(s)
  assert all(b > a + 0.005 for a, b in zip(dist, dist[1:])), dist
  assert spread[-1] < 0.9 * spread[0], spread
  assert CALLS[(name, mesh_devices)] == calls  # the scale sweep did not trace again


# --- the CLI: trains on the digits pipeline, logs, checkpoints; the evaluation job uses it --------

TINY_CLI = [
  "--config.classifier.ch=8",
  "--config.classifier.head_channels=8",
  "--config.classifier.num_res_blocks=0",
  "--config.classifier.batch_size=32",
  "--config.classifier.learning_rate=5e-3",
  "--config.classifier.num_train_steps=150",
  "--config.classifier.log_every_steps=50",
  "--config.classifier.checkpoint_every_steps=0",
]  # 0: a checkpoint at the end only
TINY_DIFFUSION = [
  "--config.training.batch_size=16",
  "--config.training.num_train_steps=4",
  "--config.training.checkpoint_every_steps=4",
  "--config.training.grid_samples_per_class=1",
  "--config.evaluation.judge_num_samples=20",
  "--config.sampling.num_steps=4",
]
TINY_EVAL = [
  "--mode=evaluate",
  "--config.evaluation.guidance=classifier",
  "--config.evaluation.classifier_scales=(0.,4.)",
  "--config.evaluation.num_samples=20",
  "--config.evaluation.batch_size=20",
  "--config.evaluation.reference_num_examples=200",
]


run_cli = functools.partial(helpers.run_cli, tiny=[*TINY_CLI, *TINY_DIFFUSION])


@pytest.mark.slow
def test_cli_trains_the_classifier_logs_and_checkpoints(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  workdir = str(tmp_path)
  proc = run_cli(workdir, "--mode=train_classifier")
  assert "accuracy on noised test images" in proc.stderr
  cdir = os.path.join(workdir, "classifier")
  assert os.listdir(os.path.join(cdir, "checkpoints")) == ["150"]
  acc = event_accumulator.EventAccumulator(cdir, size_guidance={"tensors": 0})
  acc.Reload()
  scalar = lambda tag: [
    float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)
  ]
  assert [e.step for e in acc.Tensors("train/loss")] == [50, 100, 150]
  loss = scalar("train/loss")
  # The loss falls (measured 2.27, 2.07, 1.91) and noised test digits at λ >= 5 are classified
  # far above chance (measured 55%; 10% at λ < −10, where no classifier can do better).
  assert np.isfinite(loss).all() and loss[-1] < loss[0] - 0.2, loss
  assert all(0.0 <= a <= 1.0 for a in scalar("train/accuracy"))
  edges = train_classifier.ACCURACY_LOGSNR_EDGES
  accuracy = {
    lo: scalar(train_classifier.accuracy_tag(lo, hi))[0] for lo, hi in zip(edges[:-1], edges[1:])
  }
  assert all(0.0 <= a <= 1.0 for a in accuracy.values())
  assert accuracy[5.0] > 0.3 and accuracy[10.0] > 0.3 and accuracy[-20.0] < 0.2, accuracy
  # The checkpoint loads into the classifier of the same settings.
  config = tiny_classifier_config(ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=0)
  params, step = train_state.restore_classifier_params(config, workdir, sharding.make_mesh(1))
  assert step == 150
  shapes = jax.eval_shape(
    lambda r: models.create_classifier(config).init(
      r, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), train=False
    )["params"],
    jax.random.key(0),
  )
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(params))
  assert np.abs(np.asarray(params["logits"]["kernel"])).max() > 0  # trained off the zero init


@pytest.mark.slow
def test_evaluation_job_sweeps_the_classifier_scale(trained_copy):
  from tensorboard.backend.event_processing import event_accumulator

  workdir = trained_copy  # the diffusion model (4 steps)
  # Before the classifier exists: a clear error naming the fix, and nothing written.
  proc = run_cli(workdir, *TINY_EVAL, check=False)
  assert proc.returncode != 0
  assert "--mode=train_classifier" in proc.stderr and "no classifier checkpoint" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "eval", "results.jsonl"))
  run_cli(workdir, "--mode=train_classifier", "--config.classifier.num_train_steps=20")
  run_cli(workdir, *TINY_EVAL)
  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["guidance"], r["scale"], r["step"]) for r in rows] == [
    ("classifier", 0.0, 4),
    ("classifier", 4.0, 4),
  ]
  assert not any("w" in r for r in rows)
  settings = json.loads(rows[0]["sampler_settings"])
  assert settings["guided"] and settings["classifier_guidance"]["model_labels"] == "cond"
  assert all(np.isfinite(r["fd"]) and 0.0 <= r["class_accuracy"] <= 1.0 for r in rows)
  acc = event_accumulator.EventAccumulator(
    os.path.join(workdir, "eval"), size_guidance={"tensors": 0}
  )
  acc.Reload()
  tags = acc.Tags()["tensors"]
  for tag in (
    "eval/classifier_guidance/T4/fd/s=0",
    "eval/classifier_guidance/T4/fd/s=4",
    "eval/classifier_guidance/T4/tradeoff",
    "eval/classifier_guidance/T4/samples/s=4",
  ):
    assert tag in tags, (tag, tags)
  # The classifier-free sweep of the same checkpoint sits beside it in the same results file.
  run_cli(workdir, "--mode=evaluate", "--config.evaluation.w_values=(0.,1.)", *TINY_EVAL[2:])
  with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["guidance"] for r in rows] == ["classifier", "classifier", "cfg", "cfg"]
