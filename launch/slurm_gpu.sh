#!/usr/bin/env bash
# Submit cfg_jax to a SLURM GPU cluster: sbatch launch/slurm_gpu.sbatch with one task per GPU.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh --config FILE[:ARG] --workdir DIR [options] [-- cfg_jax.main flags]

Submits python -m cfg_jax.main to SLURM on --nodes nodes with --gpus-per-node GPUs each, as one
process per GPU (--ntasks-per-node = --gpus-per-node). Why one per GPU: under SLURM,
jax.distributed.initialize() assigns each process the GPU numbered SLURM_LOCALID, so one process
per node would use a single GPU of each node. The global batch (training.batch_size) must be
divisible by nodes x GPUs.

Options (flag, or the environment variable in brackets):
  --config FILE[:ARG]    e.g. configs/imagenet64.py:p_uncond=0.2 [CFG_JAX_CONFIG] (required)
  --workdir DIR          checkpoints, events, samples on storage every node sees (a shared
                         file system or gs://) [CFG_JAX_WORKDIR] (required)
  --data-dir DIR         tfds data dir [CFG_JAX_DATA_DIR]; becomes --config.data.data_dir
  --mode MODE            train, sample or evaluate [CFG_JAX_MODE] (train)
  --nodes N              nodes [CFG_JAX_NODES] (1)
  --gpus-per-node G      GPUs (and processes) per node [CFG_JAX_GPUS_PER_NODE] (8)
  --cpus-per-task C      CPU cores per process, for the input pipeline [CFG_JAX_CPUS_PER_TASK]
  --time T               time limit, e.g. 48:00:00 [CFG_JAX_TIME] (default: the partition's)
  --partition P          [CFG_JAX_PARTITION]
  --account A            [CFG_JAX_ACCOUNT]
  --job-name NAME        (cfg_jax-MODE)
  --signal-secs S        SIGTERM every process S seconds before the time limit, so training
                         checkpoints and exits cleanly [CFG_JAX_SIGNAL_SECS] (300)
  --repo DIR             the cfg_jax checkout on the shared file system [CFG_JAX_REPO]
                         (default: the one holding this script)
  --venv DIR             venv with cfg_jax and jax[cuda12] [CFG_JAX_VENV] (default: REPO/.venv)
  --log-dir DIR          where SLURM writes JOBNAME-JOBID.out [CFG_JAX_LOG_DIR]
                         (default: REPO/runs/slurm_logs)
  --sbatch-arg ARG       one more sbatch option, repeatable, e.g. --sbatch-arg=--exclusive
                         or --sbatch-arg=--dependency=afterany:JOBID (resume after a job ends)
  --dry-run              print the commands (one per line, ready to paste), run nothing
  -h, --help             this help

The venv, once, on a login node (same jax version as cfg_jax installed, CUDA 12 wheels):
  python3.11 -m venv .venv && .venv/bin/pip install -e '.[cpu]'
  .venv/bin/pip install "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"

Example (2 nodes x 8 GPUs = 16 processes):
  launch/slurm_gpu.sh --nodes 2 --gpus-per-node 8 --time 48:00:00 \
      --config configs/imagenet64.py:p_uncond=0.2 --workdir /shared/runs/cfg_in64_p02 \
      --data-dir /shared/tensorflow_datasets
EOF
}

ROOT="$(repo_root)"
CONFIG="${CFG_JAX_CONFIG:-}"
WORKDIR="${CFG_JAX_WORKDIR:-}"
DATA_DIR="${CFG_JAX_DATA_DIR:-}"
MODE="${CFG_JAX_MODE:-train}"
NODES="${CFG_JAX_NODES:-1}"
GPUS_PER_NODE="${CFG_JAX_GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CFG_JAX_CPUS_PER_TASK:-}"
TIME_LIMIT="${CFG_JAX_TIME:-}"
PARTITION="${CFG_JAX_PARTITION:-}"
ACCOUNT="${CFG_JAX_ACCOUNT:-}"
JOB_NAME=""
SIGNAL_SECS="${CFG_JAX_SIGNAL_SECS:-300}"
REPO="${CFG_JAX_REPO:-$ROOT}"
VENV="${CFG_JAX_VENV:-}"
LOG_DIR="${CFG_JAX_LOG_DIR:-}"
SBATCH_ARGS=()
DRY_RUN=0
EXTRA=()

normalize_args "$@"
set -- "${NORMALIZED_ARGS[@]}"
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config) need_value "$1" $# "${2-}"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$1" $# "${2-}"; WORKDIR="$2"; shift 2 ;;
    --data-dir) need_value "$1" $# "${2-}"; DATA_DIR="$2"; shift 2 ;;
    --mode) need_value "$1" $# "${2-}"; MODE="$2"; shift 2 ;;
    --nodes) need_value "$1" $# "${2-}"; NODES="$2"; shift 2 ;;
    --gpus-per-node) need_value "$1" $# "${2-}"; GPUS_PER_NODE="$2"; shift 2 ;;
    --cpus-per-task) need_value "$1" $# "${2-}"; CPUS_PER_TASK="$2"; shift 2 ;;
    --time) need_value "$1" $# "${2-}"; TIME_LIMIT="$2"; shift 2 ;;
    --partition) need_value "$1" $# "${2-}"; PARTITION="$2"; shift 2 ;;
    --account) need_value "$1" $# "${2-}"; ACCOUNT="$2"; shift 2 ;;
    --job-name) need_value "$1" $# "${2-}"; JOB_NAME="$2"; shift 2 ;;
    --signal-secs) need_value "$1" $# "${2-}"; SIGNAL_SECS="$2"; shift 2 ;;
    --repo) need_value "$1" $# "${2-}"; REPO="$2"; shift 2 ;;
    --venv) need_value "$1" $# "${2-}"; VENV="$2"; shift 2 ;;
    --log-dir) need_value "$1" $# "${2-}"; LOG_DIR="$2"; shift 2 ;;
    --sbatch-arg) need_value "$1" $#; SBATCH_ARGS+=("$2"); shift 2 ;;  # the value is an option
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help; flags for cfg_jax.main such as --config.a.b=v go after --)" ;;
  esac
done

[[ -n "$CONFIG" ]] || die "missing --config (or CFG_JAX_CONFIG), e.g. --config configs/imagenet64.py:p_uncond=0.2"
[[ -n "$WORKDIR" ]] || die "missing --workdir (or CFG_JAX_WORKDIR): a directory on storage every node sees"
case "$MODE" in
  train|sample|evaluate) ;;
  *) die "--mode must be train, sample or evaluate, got '$MODE'" ;;
esac
check_positive_int --nodes "$NODES"
check_positive_int --gpus-per-node "$GPUS_PER_NODE"
check_positive_int --signal-secs "$SIGNAL_SECS"
if [[ -n "$CPUS_PER_TASK" ]]; then
  check_positive_int --cpus-per-task "$CPUS_PER_TASK"
fi
[[ -f "$REPO/launch/slurm_gpu.sbatch" ]] || die "--repo '$REPO' has no launch/slurm_gpu.sbatch: point it at the cfg_jax checkout"
if [[ "$WORKDIR" != /* && "$WORKDIR" != gs://* ]]; then
  warn "--workdir '$WORKDIR' is relative: it resolves against --repo on every node ($REPO)"
fi
need_tool sbatch "run this on the cluster's login node"
VENV="${VENV:-$REPO/.venv}"
LOG_DIR="${LOG_DIR:-$REPO/runs/slurm_logs}"
JOB_NAME="${JOB_NAME:-cfg_jax-$MODE}"

sbatch_cmd=(sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=$GPUS_PER_NODE"
            "--gpus-per-node=$GPUS_PER_NODE" "--signal=TERM@$SIGNAL_SECS"
            "--output=$LOG_DIR/%x-%j.out" "--chdir=$REPO")
if [[ -n "$CPUS_PER_TASK" ]]; then sbatch_cmd+=("--cpus-per-task=$CPUS_PER_TASK"); fi
if [[ -n "$TIME_LIMIT" ]]; then sbatch_cmd+=("--time=$TIME_LIMIT"); fi
if [[ -n "$PARTITION" ]]; then sbatch_cmd+=("--partition=$PARTITION"); fi
if [[ -n "$ACCOUNT" ]]; then sbatch_cmd+=("--account=$ACCOUNT"); fi
sbatch_cmd+=("${SBATCH_ARGS[@]}")

main_args=("--config=$CONFIG" "--workdir=$WORKDIR" "--mode=$MODE")
if [[ -n "$DATA_DIR" ]]; then main_args+=("--config.data.data_dir=$DATA_DIR"); fi

run mkdir -p "$LOG_DIR"
run "${sbatch_cmd[@]}" "$REPO/launch/slurm_gpu.sbatch" "--repo=$REPO" "--venv=$VENV" \
  -- "${main_args[@]}" "${EXTRA[@]}"
