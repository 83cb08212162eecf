"""Distilled students on disk: their names, directories, step counts and the config they sample with.

`--mode=distill` (cfg_jax/jobs/distill.py) writes the guided-distilled student to `<workdir>/stage1`
and the progressive rounds to `<workdir>/round_<k>`; `--mode=sample` and `--mode=evaluate` load
one of them with `--config.distill.student=<name>` through `resolve`. This module imports no
training code.
"""

from __future__ import annotations

import copy
import os
import re

import ml_collections

STAGE1 = "stage1"
_ROUND = re.compile(r"round_([0-9]+)")


def round_name(k: int) -> str:
  return f"round_{k}"


def round_of(student: str) -> int:
  """0 for the stage-1 student, k for 'round_<k>'; ValueError for any other name."""
  if student == STAGE1:
    return 0
  m = _ROUND.fullmatch(student)
  if m is None:
    raise ValueError(
      f"distill.student={student!r}: use '' (the trained model), '{STAGE1}' or 'round_<k>'."
    )
  return int(m.group(1))


def num_steps_of_round(distill: ml_collections.ConfigDict, k: int) -> int:
  """Sampler steps T of round k's student: (start_num_steps − 1) / 2^k DDIM moves, plus one."""
  return (distill.start_num_steps - 1) // 2**k + 1


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The rules of the `distill` section, each naming the field and the fix."""
  d, errors = config.distill, []
  if not -1.0 <= d.w_min <= d.w_max or not d.w_max < float("inf"):
    errors.append(
      f"distill.w_min={d.w_min} and distill.w_max={d.w_max} must satisfy -1 <= w_min <= w_max "
      "< inf (the paper's w: 0 is the conditional model)."
    )
  if d.stage not in (1, 2):
    errors.append(f"distill.stage must be 1 (stage 1 only) or 2 (then the rounds), got {d.stage}.")
  if d.learning_rate <= 0:
    errors.append(f"distill.learning_rate must be positive, got {d.learning_rate}.")
  for key in ("stage1_steps", "round_steps"):
    if d[key] < 1:
      errors.append(f"distill.{key} must be >= 1, got {d[key]}.")
  if d.rounds < 1:
    errors.append(f"distill.rounds must be >= 1, got {d.rounds}.")
  elif d.start_num_steps < 2 or (d.start_num_steps - 1) % 2**d.rounds:
    errors.append(
      f"distill.start_num_steps={d.start_num_steps}: its {d.start_num_steps - 1} DDIM moves must "
      f"halve distill.rounds={d.rounds} times, so start_num_steps - 1 must be a positive "
      f"multiple of {2**d.rounds} (e.g. {2**d.rounds * 4 + 1} for 4 moves in the last round)."
    )
  if d.student:
    try:
      k = round_of(d.student)
    except ValueError as e:
      errors.append(str(e))
    else:
      if k > d.rounds:
        errors.append(f"distill.student={d.student!r}, but distill.rounds={d.rounds}.")
  return errors


def student_config(config: ml_collections.ConfigDict, student: str) -> ml_collections.ConfigDict:
  """A copy of `config` for the distilled `student`: distill.student set (the U-Net takes w, the
  samplers call it once per step), training.num_train_steps its phase's steps and, for round k,
  DDIM (η = 0) at round k's step count."""
  c = copy.deepcopy(config)
  k = round_of(student)
  d = config.distill
  with c.unlocked():
    c.distill.student = student
    c.training.num_train_steps = d.round_steps if k > 0 else d.stage1_steps
    if k > 0:
      c.sampling.sampler, c.sampling.eta = "ddim", 0.0
      c.sampling.num_steps = num_steps_of_round(config.distill, k)
      c.evaluation.num_steps_values = ()
  return c


def resolve(
  config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, str]:
  """(config, workdir) that sample / evaluate load: unchanged without distill.student, else the
  student's config and its directory `<workdir>/<student>`."""
  student = config.distill.student
  if not student:
    return config, workdir
  return student_config(config, student), os.path.join(workdir, student)
