"""The DiT through every mode of the command line (configs/digits_dit.py): train, sample with a
guidance method of the batched forward, likelihood and distillation, one tiny workdir."""

import json
import os

import jax
import numpy as np
import pytest

from cfg_jax import sharding, train_state
from cfg_jax.evaluation import results
from tests.helpers import load_config, run_cli

DIT_PARAMS = 328_964  # configs/digits_dit.py's docstring: width 64, depth 4, patch 2 on 8x8x1


@pytest.mark.slow  # five CLI runs of a 4-block DiT on 8x8 digits, ~3 min
def test_dit_trains_samples_distills_and_gives_a_likelihood(tmp_path):
  workdir = str(tmp_path / "dit")
  run_cli(workdir, "--config.training.num_train_steps=4", config="digits_dit")
  config = load_config("digits_dit")
  params, step = train_state.restore_params(config, workdir, sharding.make_mesh(num_devices=1))
  assert step == 4 and sum(p.size for p in jax.tree.leaves(params)) == DIT_PARAMS
  assert "blocks_3" in params and "adaLN_modulation" in str(jax.tree_util.tree_structure(params))

  # CFG++ and APG: the two-prediction methods of the batched [z, z] / [c, ∅] forward.
  for method, sampler in (("cfgpp", "ddim"), ("apg", "ancestral")):
    run_cli(
      workdir,
      "--mode=sample",
      f"--config.sampling.guidance={method}",
      f"--config.sampling.sampler={sampler}",
      "--config.sampling.w_values=(0.,0.5)",
      config="digits_dit",
    )
    npz = os.path.join(workdir, "sample", "step_00000004", f"{method}_samples.npz")
    with np.load(npz) as f:
      assert f["images"].shape == (2, 12, 8, 8, 1)
      settings = json.loads(str(f["sampler_settings"]))
    assert (settings["sampler"], settings["guided_evals"]) == (sampler, 4)

  run_cli(
    workdir,
    "--mode=likelihood",
    "--config.likelihood.w_values=(0.,1.)",
    "--config.likelihood.num_examples=4",
    "--config.likelihood.batch_size=4",
    "--config.likelihood.solver=heun",
    "--config.likelihood.num_steps=4",
    "--config.likelihood.elbo_num_logsnrs=4",
    config="digits_dit",
  )
  with open(os.path.join(workdir, "likelihood", "results.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["w"] for r in rows] == [0.0, 1.0]
  assert all(np.isfinite(r["bpd_all"]) and np.isfinite(r["elbo_bpd_all"]) for r in rows)

  distill_dir = str(tmp_path / "distill")
  run_cli(
    distill_dir,
    "--mode=distill",
    f"--config.distill.teacher_workdir={workdir}",
    "--config.distill.rounds=1",
    "--config.distill.start_num_steps=5",
    "--config.distill.stage1_steps=2",
    "--config.distill.round_steps=2",
    config="digits_dit",
  )
  run_cli(
    distill_dir,
    "--mode=evaluate",
    "--config.distill.student=round_1",
    "--config.evaluation.w_values=(0.,1.)",
    "--config.evaluation.num_samples=20",
    "--config.evaluation.batch_size=20",
    "--config.distill.rounds=1",
    "--config.distill.start_num_steps=5",
    config="digits_dit",
  )
  rows = results.load_results(os.path.join(distill_dir, "round_1"))
  assert [r["w"] for r in rows] == [0.0, 1.0] and all(np.isfinite(r["fd"]) for r in rows)
  settings = json.loads(rows[0]["sampler_settings"])
  assert settings["w_conditioned"] and settings["network_evals"] == 3  # (5 - 1) / 2 + 1 steps
