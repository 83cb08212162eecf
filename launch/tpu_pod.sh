#!/usr/bin/env bash
# Create, set up and run cfg_jax on a Cloud TPU VM or pod slice. See usage() or launch/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh COMMAND [options] [-- extra args]

Creates a Cloud TPU VM (a single host or a multi-host pod slice), installs cfg_jax on every
worker, and runs the same cfg_jax command on all workers at once: JAX finds the other workers of
the slice by itself, so no coordinator flags are needed.

Commands:
  create     gcloud compute tpus tpu-vm create (needs --accelerator-type)
  setup      copy this repository's committed HEAD (or clone --repo-url) to every worker, create a
             venv there, pip install -e .[cpu] and jax[tpu] of the same version as the jax it installed,
             then print each worker's device count
  train      start training on all workers (detached; log and pid file in the worker's home)
  evaluate   start the evaluation job with --config.evaluation.poll=True: it evaluates every new
             checkpoint of --workdir while training runs. Run it on a second TPU VM (a TPU is
             held by one process), with the same --config and --workdir as the training run.
  logs       tail the log of the train (or --job evaluate) job on one worker (default 0)
  stop       send SIGTERM to the job on all workers: training saves a checkpoint and exits;
             running `train` again resumes from it
  ssh        run `-- COMMAND...` on --worker (default all), or open a shell on worker 0
  status     gcloud compute tpus tpu-vm describe
  delete     gcloud compute tpus tpu-vm delete (gcloud asks for confirmation)

Options (flag, or the environment variable in brackets):
  --name NAME              TPU VM name [CFG_JAX_TPU_NAME] (required)
  --zone ZONE              zone, e.g. us-central2-b [CFG_JAX_ZONE] (required)
  --project PROJECT        Google Cloud project [CFG_JAX_PROJECT] (default: gcloud's)
  --accelerator-type TYPE  e.g. v4-32, v5litepod-16, v5p-64, v6e-16 [CFG_JAX_ACCELERATOR_TYPE]
  --version VERSION        TPU software version [CFG_JAX_TPU_VERSION] (default: the one Cloud
                           TPU recommends for JAX on that generation: tpu-ubuntu2204-base for
                           v2-v4, v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e)
  --spot                   create a Spot TPU [CFG_JAX_SPOT=1]; training resumes after preemption
  --config FILE[:ARG]      e.g. configs/imagenet64.py:p_uncond=0.2 [CFG_JAX_CONFIG]
  --workdir DIR            gs://BUCKET/run: checkpoints, TensorBoard events, samples
                           [CFG_JAX_WORKDIR]; every worker (and the evaluation VM) must see it
  --data-dir DIR           tfds data dir, e.g. gs://BUCKET/tensorflow_datasets
                           [CFG_JAX_DATA_DIR]; becomes --config.data.data_dir
  --repo-url URL           setup: git clone URL on the workers instead of copying the local
                           repository [CFG_JAX_REPO_URL]
  --ref REF                setup with --repo-url: branch, tag or commit [CFG_JAX_REF] (main)
  --remote-dir DIR         repository on the workers, relative to home [CFG_JAX_REMOTE_DIR]
                           (cfg_jax)
  --remote-venv DIR        venv on the workers, relative to home [CFG_JAX_REMOTE_VENV]
                           (cfg_jax_venv)
  --python PYTHON          Python >= 3.11 for the venv [CFG_JAX_REMOTE_PYTHON] (python3.11,
                           installed with apt if missing: the TPU images ship Python 3.10)
  --worker W               logs / ssh: which worker(s), a number or `all`
  --job train|evaluate     logs / stop: which job (train)
  --foreground             train / evaluate: stay attached and stream every worker's output
  --dry-run                print the commands (one per line, ready to paste), run nothing
  -h, --help               this help

Arguments after `--` go to python -m cfg_jax.main unchanged (train / evaluate), e.g.
  -- --config.training.batch_size=1024 --config.evaluation.inception_weights=gs://B/inception.npz

Example (a v4-32 slice: 4 workers, 16 chips):
  launch/tpu_pod.sh create --name cfg-in64 --zone us-central2-b --accelerator-type v4-32
  launch/tpu_pod.sh setup --name cfg-in64 --zone us-central2-b
  launch/tpu_pod.sh train --name cfg-in64 --zone us-central2-b \
      --config configs/imagenet64.py:p_uncond=0.2 --workdir gs://BUCKET/cfg_in64_p02 \
      --data-dir gs://BUCKET/tensorflow_datasets
EOF
}

COMMAND=""
NAME="${CFG_JAX_TPU_NAME:-}"
ZONE="${CFG_JAX_ZONE:-}"
PROJECT="${CFG_JAX_PROJECT:-}"
ACCELERATOR_TYPE="${CFG_JAX_ACCELERATOR_TYPE:-}"
TPU_VERSION="${CFG_JAX_TPU_VERSION:-}"
SPOT="${CFG_JAX_SPOT:-0}"
CONFIG="${CFG_JAX_CONFIG:-}"
WORKDIR="${CFG_JAX_WORKDIR:-}"
DATA_DIR="${CFG_JAX_DATA_DIR:-}"
REPO_URL="${CFG_JAX_REPO_URL:-}"
REF="${CFG_JAX_REF:-main}"
REMOTE_DIR="${CFG_JAX_REMOTE_DIR:-cfg_jax}"
REMOTE_VENV="${CFG_JAX_REMOTE_VENV:-cfg_jax_venv}"
REMOTE_PYTHON="${CFG_JAX_REMOTE_PYTHON:-python3.11}"
WORKER=""
JOB="train"
FOREGROUND=0
DRY_RUN=0
EXTRA=()

parse_args() {
  normalize_args "$@"
  set -- "${NORMALIZED_ARGS[@]}"
  while (( $# )); do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --spot) SPOT=1; shift ;;
      --foreground) FOREGROUND=1; shift ;;
      --name) need_value "$1" $# "${2-}"; NAME="$2"; shift 2 ;;
      --zone) need_value "$1" $# "${2-}"; ZONE="$2"; shift 2 ;;
      --project) need_value "$1" $# "${2-}"; PROJECT="$2"; shift 2 ;;
      --accelerator-type) need_value "$1" $# "${2-}"; ACCELERATOR_TYPE="$2"; shift 2 ;;
      --version) need_value "$1" $# "${2-}"; TPU_VERSION="$2"; shift 2 ;;
      --config) need_value "$1" $# "${2-}"; CONFIG="$2"; shift 2 ;;
      --workdir) need_value "$1" $# "${2-}"; WORKDIR="$2"; shift 2 ;;
      --data-dir) need_value "$1" $# "${2-}"; DATA_DIR="$2"; shift 2 ;;
      --repo-url) need_value "$1" $# "${2-}"; REPO_URL="$2"; shift 2 ;;
      --ref) need_value "$1" $# "${2-}"; REF="$2"; shift 2 ;;
      --remote-dir) need_value "$1" $# "${2-}"; REMOTE_DIR="$2"; shift 2 ;;
      --remote-venv) need_value "$1" $# "${2-}"; REMOTE_VENV="$2"; shift 2 ;;
      --python) need_value "$1" $# "${2-}"; REMOTE_PYTHON="$2"; shift 2 ;;
      --worker) need_value "$1" $# "${2-}"; WORKER="$2"; shift 2 ;;
      --job) need_value "$1" $# "${2-}"; JOB="$2"; shift 2 ;;
      --) shift; EXTRA=("$@"); break ;;
      -*) die "unknown option '$1' (see --help; flags for cfg_jax.main such as --config.a.b=v go after --)" ;;
      *)
        if [[ -z "$COMMAND" ]]; then
          COMMAND="$1"; shift
        else
          die "unexpected argument '$1' (see --help; flags for cfg_jax.main go after --)"
        fi ;;
    esac
  done
}

# Flags every gcloud compute tpus tpu-vm command takes.
gcloud_location() {
  LOCATION=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION+=("--project=$PROJECT")
  fi
}

require_vm() {
  [[ -n "$NAME" ]] || die "$COMMAND needs --name (or CFG_JAX_TPU_NAME): the TPU VM's name"
  [[ -n "$ZONE" ]] || die "$COMMAND needs --zone (or CFG_JAX_ZONE): the TPU VM's zone, e.g. us-central2-b"
  need_tool gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run gcloud auth login"
  gcloud_location
}

# The recommended TPU software version for JAX on each TPU generation (Cloud TPU's runtimes page).
default_tpu_version() {
  case "$1" in
    v2-*|v3-*|v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

# A path on the workers, relative to home unless absolute, as it is written in a remote command.
# Only characters that need no quoting are allowed, so it can sit unquoted after "$HOME"/.
remote_path() {
  local flag="$1" path="$2"
  [[ "$path" =~ ^[A-Za-z0-9_./-]+$ ]] || die "$flag '$path': use only letters, digits and _ . / -"
  if [[ "$path" == /* ]]; then
    printf '%s' "$path"
  else
    # shellcheck disable=SC2016  # $HOME is expanded by the worker's shell
    printf '"$HOME"/%s' "$path"
  fi
}

check_workdir() {
  [[ -n "$WORKDIR" ]] || die "$COMMAND needs --workdir (or CFG_JAX_WORKDIR): a gs://BUCKET/... directory every worker can reach"
  if [[ "$WORKDIR" != gs://* ]]; then
    warn "--workdir '$WORKDIR' is not a gs:// path: on a multi-host slice every worker (and an evaluation VM) must see the same workdir, so use gs://BUCKET/... unless this is a single-host TPU VM"
  fi
}

cmd_create() {
  require_vm
  [[ -n "$ACCELERATOR_TYPE" ]] || die "create needs --accelerator-type (or CFG_JAX_ACCELERATOR_TYPE), e.g. v4-32 or v5litepod-16"
  [[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
    || die "--accelerator-type '$ACCELERATOR_TYPE' is not of the form v4-32 / v5litepod-16 / v5p-64 / v6e-16"
  if [[ -z "$TPU_VERSION" ]]; then
    TPU_VERSION="$(default_tpu_version "$ACCELERATOR_TYPE")" \
      || die "no default --version for '$ACCELERATOR_TYPE': pass --version (see https://cloud.google.com/tpu/docs/runtimes)"
  fi
  local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}"
             "--accelerator-type=$ACCELERATOR_TYPE" "--version=$TPU_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    cmd+=(--spot)
  fi
  run "${cmd[@]}"
}

# Runs a shell command on the given worker(s) over gcloud ssh.
on_workers() {
  local worker="$1" remote="$2"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=$worker" "--command=$remote"
}

cmd_setup() {
  require_vm
  local dir venv py src_steps
  dir="$(remote_path --remote-dir "$REMOTE_DIR")"
  venv="$(remote_path --remote-venv "$REMOTE_VENV")"
  py="$(quote "$REMOTE_PYTHON")"
  if [[ -n "$REPO_URL" ]]; then
    src_steps="{ [ -d $dir/.git ] || git clone --quiet $(quote "$REPO_URL") $dir; }"
    src_steps+=" && git -C $dir fetch --quiet origin $(quote "$REF")"
    src_steps+=" && git -C $dir checkout --quiet --detach FETCH_HEAD"
  else
    # The committed HEAD of this checkout: every worker runs the same, known commit.
    local root
    root="$(repo_root)"
    if [[ "$DRY_RUN" == 1 ]]; then
      SRC_ARCHIVE="$(mktemp -u -t cfg_jax_src.XXXXXX)"  # a name only: a dry run creates nothing
    else
      need_tool git "install git, or pass --repo-url to clone on the workers"
      SRC_ARCHIVE="$(mktemp -t cfg_jax_src.XXXXXX)"
      trap 'rm -f "$SRC_ARCHIVE"' EXIT
      if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]]; then
        warn "uncommitted changes in $root are not copied: setup sends the committed HEAD"
      fi
    fi
    run git -C "$root" archive --format=tar.gz "--output=$SRC_ARCHIVE" HEAD
    run gcloud compute tpus tpu-vm scp "$SRC_ARCHIVE" "$NAME:cfg_jax_src.tar.gz" "${LOCATION[@]}" --worker=all
    src_steps="mkdir -p $dir && tar -xzf \"\$HOME\"/cfg_jax_src.tar.gz -C $dir"
  fi
  local steps=(
    "set -e"
    "$src_steps"
    "if ! command -v $py >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq $py $py-venv; fi"
    "if [ ! -x $venv/bin/python ]; then $py -m venv $venv; fi"
    "$venv/bin/pip install --quiet --upgrade pip"
    "$venv/bin/pip install --quiet -e $dir'[cpu]'"
    "jax_version=\$($venv/bin/python -c 'import jax; print(jax.__version__)')"
    "$venv/bin/pip install --quiet \"jax[tpu]==\$jax_version\""
    "$venv/bin/python -c 'import jax; print(f\"worker {jax.process_index()}: {jax.local_device_count()} local / {jax.device_count()} global {jax.default_backend()} devices\")'"
  )
  local joined
  joined="$(printf '%s; ' "${steps[@]}")"
  on_workers all "${joined%; }"
}

# The python -m cfg_jax.main command for train / evaluate, quoted for the remote shell.
main_command() {
  local mode="$1" venv="$2"
  [[ -n "$CONFIG" ]] || die "$COMMAND needs --config (or CFG_JAX_CONFIG), e.g. configs/imagenet64.py:p_uncond=0.2"
  check_workdir
  local args=("--config=$CONFIG" "--workdir=$WORKDIR" "--mode=$mode")
  if [[ -n "$DATA_DIR" ]]; then
    args+=("--config.data.data_dir=$DATA_DIR")
  fi
  if [[ "$mode" == evaluate ]]; then
    args+=("--config.evaluation.poll=True")
  fi
  printf '%s/bin/python -m cfg_jax.main %s' "$venv" "$(quote "${args[@]}" "${EXTRA[@]}")"
}

cmd_run() {
  local mode="$1"
  require_vm
  local dir venv main log pid remote
  dir="$(remote_path --remote-dir "$REMOTE_DIR")"
  venv="$(remote_path --remote-venv "$REMOTE_VENV")"
  main="$(main_command "$mode" "$venv")"
  log="\"\$HOME\"/cfg_jax_$mode.log"
  pid="\"\$HOME\"/cfg_jax_$mode.pid"
  if [[ "$FOREGROUND" == 1 ]]; then
    remote="cd $dir && $main"
  else
    # Detached, so closing the local terminal does not stop the run; a second start is refused.
    remote="cd $dir || exit 1; "
    remote+="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then "
    remote+="echo \"\$(hostname): the $mode job is already running (pid \$(cat $pid)); use stop first\" >&2; exit 1; fi; "
    remote+="nohup $main > $log 2>&1 < /dev/null & "
    remote+="echo \$! > $pid; echo \"\$(hostname): started $mode, pid \$!, log $log\""
  fi
  on_workers all "$remote"
}

cmd_logs() {
  require_vm
  [[ "$JOB" == train || "$JOB" == evaluate ]] || die "--job must be train or evaluate, got '$JOB'"
  on_workers "${WORKER:-0}" "tail -n 200 -f \"\$HOME\"/cfg_jax_$JOB.log"
}

cmd_stop() {
  require_vm
  [[ "$JOB" == train || "$JOB" == evaluate ]] || die "--job must be train or evaluate, got '$JOB'"
  local pid="\"\$HOME\"/cfg_jax_$JOB.pid"
  on_workers all "if [ -f $pid ] && kill -TERM \"\$(cat $pid)\" 2>/dev/null; then echo \"\$(hostname): sent SIGTERM to the $JOB job\"; else echo \"\$(hostname): no $JOB job running\"; fi"
}

cmd_ssh() {
  require_vm
  if (( ${#EXTRA[@]} )); then
    on_workers "${WORKER:-all}" "$(quote "${EXTRA[@]}")"
  else
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=${WORKER:-0}"
  fi
}

main() {
  parse_args "$@"
  if [[ -n "$WORKER" && ! "$WORKER" =~ ^(all|[0-9]+(,[0-9]+)*)$ ]]; then
    die "--worker must be all, a worker number or a comma-separated list of them, got '$WORKER'"
  fi
  if (( ${#EXTRA[@]} )) && [[ "$COMMAND" != train && "$COMMAND" != evaluate && "$COMMAND" != ssh ]]; then
    die "arguments after -- are for train, evaluate and ssh, not '$COMMAND'"
  fi
  case "$COMMAND" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    train) cmd_run train ;;
    evaluate) cmd_run evaluate ;;
    logs) cmd_logs ;;
    stop) cmd_stop ;;
    ssh) cmd_ssh ;;
    status) require_vm; run gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" ;;
    delete) require_vm; run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" ;;
    "") usage >&2; die "missing COMMAND: one of create, setup, train, evaluate, logs, stop, ssh, status, delete" ;;
    *) die "unknown command '$COMMAND': use one of create, setup, train, evaluate, logs, stop, ssh, status, delete" ;;
  esac
}

main "$@"
