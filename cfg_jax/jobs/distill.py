"""`--mode=distill`: guided distillation (Meng et al. 2023) then progressive distillation (Salimans &
Ho 2022) of a trained model, each phase a resumable run of `train_loop.run` in its own directory
(`<workdir>/stage1`, `<workdir>/round_<k>`; `students.py`). The steps are `distillation.py`'s.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from cfg_jax import (
  config_lib,
  distillation,
  models,
  sampling,
  sampling_runner,
  students,
  train_loop,
  train_state,
  validation,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import sources
from cfg_jax.train_state import TrainState


def run_phase(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  student: str,
  step: Any,
  params_from: Any,
  frozen: Any,
  num_steps: int,
  mesh,
  shape: tuple[int, ...],
) -> TrainState:
  """Trains `student` in `<workdir>/<student>` with `step`(state, batch, rng, frozen, model=,
  tx=, config=) → (state, metrics), resuming from its checkpoints; writes the student's
  sample grids as training does (none when training.grid_samples_per_class = 0)."""
  cfg = students.student_config(config, student)
  opt_cfg = distillation.optimizer_config(cfg)
  model, tx = models.create_model(cfg), train_state.create_optimizer(opt_cfg)
  init = functools.partial(distillation.student_init, model=model, tx=tx, shape=shape)
  rng = jax.random.fold_in(jax.random.key(config.seed), 7 + students.round_of(student))
  shardings = sharding_lib.state_shardings(
    jax.eval_shape(init, rng, params_from), mesh, sharding_lib.mesh_config(config)[1]
  )
  state = jax.jit(init, out_shardings=shardings)(rng, params_from)
  step_fn = functools.partial(step, model=model, tx=tx, config=opt_cfg)
  phase_dir = os.path.join(workdir, student)
  sampler = sampling_runner.make_sampler(
    model.apply,
    shape=shape,
    null_label=cfg.data.num_classes,
    mesh=mesh,
    config=sampling.SamplerConfig.from_config(cfg),
  )

  def periodic(step: int, state: TrainState, *, last: bool, writer) -> None:
    per_class = cfg.training.grid_samples_per_class  # 0: no grids
    if per_class > 0 and train_loop.every(step, cfg.training.sample_every_steps, last=last):
      sampling_runner.write_sample_grids(
        writer=writer,
        workdir=phase_dir,
        step=step,
        sampler=sampler,
        params=state.ema_params,
        config=cfg,
        mesh=mesh,
      )

  return train_loop.run(
    state,
    distillation.jit_distill_step(step_fn, mesh, shardings, frozen),
    workdir=phase_dir,
    **train_loop.loop_inputs(config, num_steps=num_steps),
    mesh=mesh,
    rng=rng,
    hparams=cfg,
    metadata={"config": cfg.to_json(), "student": student},
    periodic=periodic,
    what=f"distill/{student}",
  )


def check_distill_config(config: ml_collections.ConfigDict) -> None:
  """`validation.validate` plus the fields only --mode=distill needs; raises ConfigError."""
  validation.validate(config)
  d, errors = config.distill, []
  if not d.teacher_workdir:
    errors.append("distill.teacher_workdir is empty: give the trained model's --workdir.")
  if d.student:
    errors.append(
      f"distill.student={d.student!r} selects a student for --mode=sample/evaluate; leave it "
      "'' with --mode=distill."
    )
  if errors:
    raise config_lib.ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, TrainState]:
  """Runs stage 1 and (distill.stage = 2) the progressive rounds, each resuming from its own
  checkpoints in `<workdir>/<student>`; stops after a preempted phase. Returns the final states."""
  check_distill_config(config)
  d = config.distill
  mesh = sharding_lib.make_mesh_from_config(config)
  shape = tuple(sources.check_available(config.data).image_shape)
  teacher_params, teacher_step = train_state.restore_params(
    config, d.teacher_workdir, mesh, step=None if d.teacher_step < 0 else d.teacher_step
  )
  logging.info("Distilling the teacher %s at step %d.", d.teacher_workdir, teacher_step)
  teacher = models.create_model(config)
  phase = functools.partial(run_phase, config, workdir, mesh=mesh, shape=shape)
  states = {}
  states[students.STAGE1] = state = phase(
    student=students.STAGE1,
    step=functools.partial(distillation.stage1_step, teacher=teacher),
    params_from=teacher_params,
    frozen=teacher_params,
    num_steps=d.stage1_steps,
  )
  # The previous student's sampler settings that `denoise` reads (thresholding, guidance
  # interval) are the same for every student: one static config, one compiled round step.
  teacher_sampler = sampling.SamplerConfig.from_config(
    students.student_config(config, students.STAGE1)
  )
  for k in range(1, d.rounds + 1 if d.stage == 2 else 1):
    if int(state.step) < (d.stage1_steps if k == 1 else d.round_steps):
      return states  # preempted: the same command resumes
    name = students.round_name(k)
    states[name] = state = phase(
      student=name,
      step=functools.partial(distillation.round_step, teacher_sampler=teacher_sampler),
      params_from=state.ema_params,
      frozen={
        "teacher": state.ema_params,
        "num_moves": jax.device_put(
          jnp.int32(students.num_steps_of_round(d, k) - 1), sharding_lib.replicated(mesh)
        ),
      },
      num_steps=d.round_steps,
    )
  return states
