"""Two JAX processes on localhost (2 CPU devices each) against one process with 4 devices.

The multi-controller runtime for real: `python -m cfg_jax.main --coordinator_address=127.0.0.1:P
--num_processes=2 --process_id=i`, gloo collectives between the processes. Each process reads its
half of every global batch; the run trains, checkpoints, is stopped, restores and trains on, then
evaluates. Losses, parameters and evaluation metrics must match the single-process run, and only
process 0 writes TensorBoard events, images and results.
"""

import glob
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from cfg_jax import cluster, sharding, train_state
from tests.helpers import REPO, load_config

TINY = [
  "--config=configs/digits.py",
  "--config.training.batch_size=16",
  "--config.training.log_every_steps=1",
  "--config.training.checkpoint_every_steps=2",
  "--config.training.grid_samples_per_class=1",
  "--config.sampling.num_steps=4",
  "--config.evaluation.judge_num_samples=0",  # no judge: one sampler compile less per run
  "--config.guidance.w_values=(1.,)",
]
# 18 samples: not a multiple of the 4 devices (padded and trimmed back).
EVAL = [
  "--mode=evaluate",
  "--config.evaluation.w_values=(0.,2.)",
  "--config.evaluation.num_samples=18",
  "--config.evaluation.batch_size=18",
  "--config.evaluation.reference_num_examples=200",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_single(workdir, *args):
  proc = subprocess.run(
    [sys.executable, "-m", "cfg_jax.main", f"--workdir={workdir}", *TINY, *args],
    cwd=REPO,
    env=_env(4),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def run_two(workdir, *args):
  """Both processes of one multi-process job; returns their stderr (process 0 first)."""
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "cfg_jax.main",
        f"--workdir={workdir}",
        *TINY,
        *args,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      env=_env(2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    errs = [p.communicate(timeout=600)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, err) in enumerate(zip(procs, errs)):
    assert p.returncode == 0, f"process {i} exit {p.returncode}\n{err[-4000:]}"
  return errs


def losses(workdir):
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  return {
    e.step: float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)))
    for e in acc.Tensors("train/loss")
  }


def final_params(workdir, step):
  """The raw (not EMA) params of checkpoint `step`, restored on one device of this process."""
  params, _ = train_state.restore_params(
    load_config("digits"), workdir, sharding.make_mesh(1), step=step, use_ema=False, gather=True
  )
  return jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  single = str(tmp_path_factory.mktemp("single"))
  multi = str(tmp_path_factory.mktemp("multi"))
  run_single(single, "--config.training.num_train_steps=4")
  first = run_two(multi, "--config.training.num_train_steps=2")
  events_after_first = glob.glob(os.path.join(multi, "events.out.tfevents.*"))
  second = run_two(multi, "--config.training.num_train_steps=4")  # restores step 2
  return single, multi, first, second, events_after_first


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  single, multi, first, second, events_after_first = runs
  assert "2 local / 4 global devices" in first[0] and "process 1 / 2" in first[1]
  assert "Resumed from checkpoint step 2" in second[0]
  one, two = losses(single), losses(multi)
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  np.testing.assert_allclose(
    [two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5
  )
  a, b = final_params(single, 4), final_params(multi, 4)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


@pytest.mark.slow
def test_only_process_zero_writes_events_and_images(runs):
  _, multi, _, _, events_after_first = runs
  # One events file per invocation (process 0's), none from process 1.
  assert len(events_after_first) == 1
  assert len(glob.glob(os.path.join(multi, "events.out.tfevents.*"))) == 2
  pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(multi, "samples", "*.png")))
  assert pngs == ["step_00000002_w1.png", "step_00000004_w1.png"], pngs


@pytest.mark.slow
def test_two_processes_evaluate_like_one(runs):
  single, multi, *_ = runs
  run_single(single, *EVAL)
  run_two(multi, *EVAL)
  rows = {}
  for name, workdir in (("single", single), ("multi", multi)):
    with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
      rows[name] = [json.loads(line) for line in f]
  assert [(r["step"], r["w"]) for r in rows["multi"]] == [(4, 0.0), (4, 2.0)]  # written once
  for r1, r2 in zip(rows["single"], rows["multi"]):
    for k in ("fd", "is", "class_accuracy", "precision", "recall"):
      np.testing.assert_allclose(r2[k], r1[k], rtol=1e-3, atol=1e-4, err_msg=k)
  assert len(glob.glob(os.path.join(multi, "eval", "events.out.tfevents.*"))) == 1


NVIDIA_GPU = ("0x10de", "0x2330")  # an H100 (passed through with VFIO on some GPU hosts)
GOOGLE_GVNIC = ("0x1ae0", "0x0042")  # a GCE VM's virtual NIC: Google's vendor id, not a TPU
TPU_V5E = ("0x1ae0", "0x0063")


def _fake_host(monkeypatch, tmp_path, env, pci=(), accel=False, vfio=False):
  """A host with `env`, PCI devices `pci` ((vendor, device) ids), /dev/accel0 and /dev/vfio/0."""

  for k in (
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
  ):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  for i, (vendor, device) in enumerate(pci):
    d = tmp_path / "sys" / f"0000:00:{i:02x}.0"
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
  dev = tmp_path / "dev"
  (dev / "vfio").mkdir(parents=True)
  (dev / "accel").mkdir()  # the kernel's accel subsystem (/dev/accel/accel0: Intel, Habana)
  if accel:
    (dev / "accel0").touch()
  if vfio:
    (dev / "vfio" / "0").touch()
  files = {str(p).replace(str(dev), "/dev") for p in dev.rglob("*")}
  monkeypatch.setattr(cluster.os.path, "exists", lambda p: p in files)
  monkeypatch.setattr(cluster, "PCI_DEVICES_DIR", str(tmp_path / "sys"))
  monkeypatch.setattr(cluster, "TPU_ACCEL_DEVICES", str(dev / "accel[0-9]*"))


@pytest.mark.parametrize(
  "env,pci,accel,expected",
  [
    ({}, (), False, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, (), False, False),  # one task: nothing to join
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, (), False, True),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, (), False, True),  # GKE TPU pod
    ({}, (GOOGLE_GVNIC,), True, True),  # Cloud TPU VM (v2-v4)
    ({}, (GOOGLE_GVNIC, TPU_V5E, TPU_V5E), False, True),  # Cloud TPU VM (v5e+)
    ({}, (GOOGLE_GVNIC, NVIDIA_GPU), False, False),  # GCE GPU VM
  ],
)
def test_cluster_detection(monkeypatch, tmp_path, env, pci, accel, expected):
  _fake_host(monkeypatch, tmp_path, env, pci=pci, accel=accel, vfio=bool(pci))
  assert cluster.cluster_detected() is expected


def test_vfio_gpu_host_stays_single_process(monkeypatch, tmp_path):
  """/dev/vfio/0 (a GPU passed through with VFIO) is no TPU: --distributed=auto must not call
  jax.distributed.initialize(), which would fail there for want of a coordinator."""
  _fake_host(monkeypatch, tmp_path, {}, pci=(GOOGLE_GVNIC, NVIDIA_GPU), vfio=True)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  flags = dict(coordinator=None, num_processes=None, process_id=None)
  cluster.initialize_distributed("auto", **flags)
  assert calls == []
  cluster.initialize_distributed("on", **flags)  # 'on' still forces it
  assert calls == [((), {})]
  cluster.initialize_distributed("off", **{**flags, "coordinator": "h:1"})  # 'off' never
  assert calls == [((), {})]
  with pytest.raises(ValueError, match="--num_processes and --process_id"):
    cluster.initialize_distributed("auto", **{**flags, "coordinator": "h:1"})
