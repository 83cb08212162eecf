"""Guided and progressive distillation (cfg_jax/distill.py) against known answers."""

import dataclasses
import functools
import glob
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import (
  checkpointing,
  config_lib,
  diffusion,
  distillation,
  guidance,
  models,
  sampling,
  schedules,
  students,
  toy2d,
  train_state,
  validation,
)
from cfg_jax.evaluation import results
from cfg_jax.jobs import distill as distill_job
from cfg_jax.models import unet
from tests.helpers import tiny_config


def _tiny(**overrides):
  """A one-level, 8-channel U-Net on digits: the cheapest model that compiles."""
  base = {
    "model.ch": 8,
    "model.ch_mult": (1,),
    "model.attn_resolutions": (),
    "model.head_channels": 8,
    "training.grid_samples_per_class": 0,
  }
  return tiny_config(**{**base, **overrides})


def _perturbed(params, seed=0):
  """params plus noise: a 'trained' teacher whose zero-initialised outputs are not zero."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.slow  # op by op (exact kernels for both models): ~500 s on a loaded 2-core CPU
def test_w_embedding_at_init_is_the_teachers_conditional_model():
  config = _tiny()
  teacher = models.create_model(config)
  student = models.create_model(students.student_config(config, students.STAGE1))
  assert student.w_embedding and not teacher.w_embedding
  shape = models.image_shape(config)
  tx = train_state.create_optimizer(config)
  ch = config.model.ch  # the two Dense layers of docs/architecture.md
  assert models.count_params(student, shape) - models.count_params(teacher, shape) == (
    20 * ch**2 + 8 * ch
  )
  init = train_state.init_state(jax.random.key(0), model=teacher, tx=tx, shape=shape)
  t_params = _perturbed(init.params)
  params = distillation.student_init(
    jax.random.key(1), t_params, model=student, tx=tx, shape=shape
  ).params
  assert set(params) == set(t_params) | {"w_dense_0", "w_dense_1"}
  b = 6
  z = jax.random.normal(jax.random.key(2), (b, *shape))
  lam = jnp.linspace(-15.0, 15.0, b)
  labels = jnp.array([0, 1, 2, 3, 10, 9], jnp.int32)
  w = jnp.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
  want = teacher.apply({"params": t_params}, z, lam, labels, train=False)
  got = student.apply({"params": params}, z, lam, labels, w, train=False)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert float(jnp.abs(want).mean()) > 1e-3  # the comparison is not 0 == 0
  with pytest.raises(ValueError, match="w_embedding"):
    student.apply({"params": params}, z, lam, labels, train=False)


def test_ddim_target_of_an_exact_point_mass_teacher_is_the_point():
  """For data = one point x0 the exact ε is (z − α x0)/σ and every DDIM step is exact, so the
  one-step target of two steps is x0 itself, at any λ and w."""
  b, x0 = 5, jnp.array([0.3, -0.7])
  eps_fn = lambda z, lam, labels, w: diffusion.eps_from_x(
    z=z, x=jnp.broadcast_to(x0, z.shape), logsnr=lam
  )
  lam = jnp.array([-12.0, -8.0, -2.0, 1.0, 5.0])
  logsnrs = (lam, lam + 1.5, lam + 3.0)
  z = jax.random.normal(jax.random.key(0), (b, 2))
  cfg = sampling.SamplerConfig(w_conditioned=True, clip_x=False)
  x = distillation.two_step_target(
    eps_fn,
    z=z,
    logsnrs=logsnrs,
    labels=jnp.zeros(b, jnp.int32),
    w=jnp.full((b,), 2.0),
    null_label=1,
    config=cfg,
  )
  np.testing.assert_allclose(np.asarray(x), np.broadcast_to(np.asarray(x0), (b, 2)), atol=2e-4)


def test_ddim_target_x_inverts_one_ddim_step():
  z = jax.random.normal(jax.random.key(0), (4, 3))
  x = jax.random.uniform(jax.random.key(1), (4, 3), minval=-1, maxval=1)
  lam, lam_next = jnp.array([-6.0, -1.0, 0.5, 3.0]), jnp.array([-2.0, 2.0, 4.0, 9.0])
  bl = lambda l: l[:, None]
  eps = diffusion.eps_from_x(z=z, x=x, logsnr=lam)
  z_next = sampling.ddim_step(x=x, eps=eps, logsnr=bl(lam), logsnr_next=bl(lam_next), eta=0.0)
  got = distillation.ddim_target_x(z=z, z_next=z_next, logsnr=lam, logsnr_next=lam_next)
  np.testing.assert_allclose(np.asarray(got), np.asarray(x), atol=1e-4)


def test_a_w_conditioned_eps_samples_like_guidance_in_one_forward_of_b():
  """A student that is exactly the teacher's guided ε gives the teacher's guided samples, with
  one forward of batch B per step (the teacher: 2B)."""
  toy = toy2d.default_toy()
  exact = toy2d.eps_fn(toy)
  batches = []

  def student(z, lam, labels, w):
    batches.append(z.shape[0])
    w = w.reshape(-1, 1)
    return guidance.guided_eps(
      eps_cond=exact(z, lam, labels),
      eps_uncond=exact(z, lam, jnp.full_like(labels, toy.null_label)),
      w=w[:, 0],
    )

  b = 8
  kw = dict(
    rng=jax.random.key(0),
    sample_ids=jnp.arange(b),
    labels=jnp.arange(b, dtype=jnp.int32) % 3,
    w=jnp.linspace(0.0, 3.0, b),
    shape=(2,),
    null_label=toy.null_label,
  )
  for sampler in ("ancestral", "ddim", "heun"):
    cfg = sampling.SamplerConfig(num_steps=8, sampler=sampler)
    want = sampling.sample(exact, config=cfg, **kw)
    batches.clear()
    got = sampling.sample(student, config=dataclasses.replace(cfg, w_conditioned=True), **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert set(batches) == {b}
  assert dataclasses.replace(cfg, w_conditioned=True).describe()["guided_evals"] == 0


class _ToyStudent(nn.Module):
  """A w-conditioned MLP ε(z, λ, c, w) for 2D data, with the U-Net's call signature."""

  num_classes: int
  w_embedding: bool = True

  @nn.compact
  def __call__(self, z, logsnr, labels, w, *, train):
    del train
    u = unet.logsnr_to_unit_time(logsnr, -20.0, 20.0)
    h = jnp.concatenate(
      [
        z,
        unet.sinusoidal_embedding(1000.0 * u, 32),
        jax.nn.one_hot(labels, self.num_classes + 1),
        unet.sinusoidal_embedding(unet.W_EMBED_SCALE * w, 16),
      ],
      axis=-1,
    )
    for _ in range(3):
      h = nn.silu(nn.Dense(128)(h))
    return nn.Dense(2)(h)


@pytest.mark.slow
def test_stage1_student_learns_the_exact_teachers_guided_eps():
  """Stage 1 with the exact ε of the 2D mixture as teacher: on held-out (z, λ, c, w) the student's
  ε is far closer to the guided ε̃^w than the conditional ε is (which a w-blind model gives)."""
  toy = toy2d.default_toy()
  exact = toy2d.eps_fn(toy)
  config = tiny_config()
  with config.unlocked():
    config.data.num_classes = toy.num_classes
    config.training.warmup_steps = 0
    config.distill.learning_rate = 3e-3
  opt_cfg = distillation.optimizer_config(config)
  model, tx = _ToyStudent(toy.num_classes), train_state.create_optimizer(opt_cfg)
  teacher = types.SimpleNamespace(apply=lambda v, z, lam, labels, train: exact(z, lam, labels))
  state = distillation.student_init(jax.random.key(0), {}, model=model, tx=tx, shape=(2,))
  step = jax.jit(
    functools.partial(distillation.stage1_step, model=model, teacher=teacher, tx=tx, config=opt_cfg)
  )
  rng = np.random.default_rng(0)
  labels = rng.integers(0, toy.num_classes, 200_000).astype(np.int32)
  data = toy2d.sample_data(toy, labels=labels, seed=1)
  b = 256
  for i in range(1500):
    batch = {
      "image": data[i * b % len(data) : i * b % len(data) + b],
      "label": labels[i * b % len(data) : i * b % len(data) + b],
    }
    state, _ = step(state, batch, jax.random.key(1), {})

  n = 2000
  k = jax.random.split(jax.random.key(7), 4)
  lab = jnp.asarray(rng.integers(0, toy.num_classes, n), jnp.int32)
  x = jnp.asarray(toy2d.sample_data(toy, labels=np.asarray(lab), seed=9))
  lam = schedules.logsnr_schedule_cosine(jax.random.uniform(k[0], (n,)))
  z = distillation._noised(x, k[1], lam)
  w = jax.random.uniform(k[2], (n,), minval=0.0, maxval=4.0)
  eps_c = exact(z, lam, lab)
  target = guidance.guided_eps(
    eps_cond=eps_c, eps_uncond=exact(z, lam, jnp.full_like(lab, toy.null_label)), w=w
  )
  got = model.apply({"params": state.ema_params}, z, lam, lab, w, train=False)
  err = float(jnp.mean((got - target) ** 2))
  blind = float(jnp.mean((eps_c - target) ** 2))
  assert err < 0.1 * blind, (err, blind)


def _save_teacher(config, workdir):
  """A 'trained' teacher checkpoint of `config` (init params plus noise) in `workdir`."""
  model, tx = models.create_model(config), train_state.create_optimizer(config)
  state = train_state.init_state(
    jax.random.key(0), model=model, tx=tx, shape=models.image_shape(config)
  )
  params = _perturbed(state.params)
  state = state.replace(params=params, ema_params=params)
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save(1, state, metadata={"config": config.to_json()})
  ckpt.close()


def _distill_config(teacher_dir, **overrides):
  return _tiny(
    **{
      "distill.teacher_workdir": teacher_dir,
      "distill.stage1_steps": 2,
      "distill.round_steps": 2,
      "distill.rounds": 1,
      "distill.start_num_steps": 5,
      "distill.stage": 2,
      **overrides,
    }
  )


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  teacher_dir = str(root / "teacher")
  _save_teacher(_tiny(), teacher_dir)
  workdir = str(root / "one_run")
  states = distill_job.run(_distill_config(teacher_dir), workdir)
  return root, teacher_dir, workdir, states


@pytest.mark.slow
def test_distillation_resumes_exactly(distilled):
  root, teacher_dir, _, states = distilled
  assert set(states) == {"stage1", "round_1"}
  workdir = str(root / "two_halves")
  half = distill_job.run(_distill_config(teacher_dir, **{"distill.round_steps": 1}), workdir)
  assert int(half["round_1"].step) == 1
  full = distill_job.run(_distill_config(teacher_dir), workdir)
  for name in states:
    assert int(full[name].step) == int(states[name].step) == 2
    for a, b in zip(jax.tree.leaves(full[name]), jax.tree.leaves(states[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_distill_config_is_a_clear_error():
  config = _tiny(**{"distill.start_num_steps": 64, "distill.w_min": 2.0, "distill.w_max": 1.0})
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(config)
  assert "distill.start_num_steps=64" in str(e.value) and "distill.w_min" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="distill.teacher_workdir"):
    distill_job.check_distill_config(_tiny())
  with pytest.raises(config_lib.ConfigError, match="distill.student='round_9'"):
    validation.validate(_tiny(**{"distill.student": "round_9"}))


def test_student_config_samples_round_k_with_ddim_at_its_steps():
  config = _tiny(**{"distill.start_num_steps": 33, "distill.rounds": 3})
  c = students.student_config(config, "round_2")
  scfg = sampling.SamplerConfig.from_config(c)
  assert (scfg.sampler, scfg.eta, scfg.num_steps, scfg.w_conditioned) == ("ddim", 0.0, 9, True)
  assert scfg.describe()["network_evals"] == 9
  assert config.distill.student == "" and not models.create_model(config).w_embedding


CLI_TINY = [
  "--config.model.ch=8",
  "--config.model.ch_mult=(1,)",
  "--config.model.attn_resolutions=()",
  "--config.model.head_channels=8",
  "--config.distill.rounds=1",
  "--config.distill.start_num_steps=5",
  "--config.distill.stage1_steps=2",
  "--config.distill.round_steps=2",
]


@pytest.mark.slow
def test_a_distilled_checkpoint_samples_and_evaluates_through_the_cli(distilled):
  from tests.helpers import run_cli

  workdir = distilled[2]
  run_cli(
    workdir,
    "--mode=sample",
    "--config.distill.student=round_1",
    "--config.sampling.w_values=(0.,2.)",
    *CLI_TINY,
  )
  with np.load(os.path.join(workdir, "round_1", "sample", "step_00000002", "samples.npz")) as f:
    assert f["images"].shape == (2, 12, 8, 8, 1)
    settings = json.loads(str(f["sampler_settings"]))
  assert settings["sampler"] == "ddim" and settings["num_steps"] == 3
  assert settings["network_evals"] == 3 and settings["w_conditioned"]
  assert settings["guided_evals"] == 0
  run_cli(
    workdir,
    "--mode=evaluate",
    "--config.distill.student=stage1",
    "--config.evaluation.w_values=(0.,1.)",
    "--config.evaluation.num_samples=20",
    "--config.evaluation.batch_size=20",
    *CLI_TINY,
  )
  rows = results.load_results(os.path.join(workdir, "stage1"))
  assert [(r["step"], r["w"], r["num_steps"]) for r in rows] == [(2, 0.0, 4), (2, 1.0, 4)]
  assert all(json.loads(r["sampler_settings"])["w_conditioned"] for r in rows)
  assert all(np.isfinite(r["fd"]) for r in rows)
  assert glob.glob(os.path.join(workdir, "stage1", "eval", "events.out.tfevents.*"))
