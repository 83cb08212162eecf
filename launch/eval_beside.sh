#!/usr/bin/env bash
# Start the evaluation job beside a training run: it polls the training workdir and evaluates
# every new checkpoint (python -m cfg_jax.main --mode=evaluate --config.evaluation.poll=True).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
Usage: launch/eval_beside.sh tpu|slurm|local [options] [-- cfg_jax.main flags]

Starts python -m cfg_jax.main --mode=evaluate --config.evaluation.poll=True on the training
run's --config and --workdir. It evaluates each new checkpoint once (its w / T sweep, written to
WORKDIR/eval/ and TensorBoard), remembers what it did across restarts, and stops after the final
training step or evaluation.poll_timeout_secs without a new checkpoint. Non-digits datasets need
the Inception weights: -- --config.evaluation.inception_weights=gs://BUCKET/inception.npz

Targets:
  tpu    on a second TPU VM (a TPU is held by one process, so not on the training slice):
         launch/tpu_pod.sh evaluate with the options given here (--name of the evaluation VM,
         --zone, --config, --workdir gs://..., ...). With --create (and --accelerator-type, e.g.
         v4-8) it first runs tpu_pod.sh create and setup for that VM.
  slurm  as its own SLURM job: launch/slurm_gpu.sh --mode=evaluate with the options given here
         (default --nodes 1 --gpus-per-node 1 unless given).
  local  on this machine, e.g. the GPU node that trains: detached, on the GPUs in --gpus.
         Options: --config, --workdir, --data-dir (as for training),
           --gpus LIST        CUDA_VISIBLE_DEVICES of the evaluator, e.g. 7 [CFG_JAX_EVAL_GPUS]
                              (default: all GPUs, shared with training)
           --mem-fraction F   XLA_PYTHON_CLIENT_MEM_FRACTION of the evaluator, e.g. 0.2, when it
                              shares GPUs with training [CFG_JAX_EVAL_MEM_FRACTION]
           --python PYTHON    [CFG_JAX_PYTHON] (default: REPO/.venv/bin/python)
           --log FILE         [CFG_JAX_EVAL_LOG] (default: REPO/runs/eval_beside.log)
  Training keeps its own devices: give the evaluator a GPU of its own (and train on the others
  with a batch divisible by their count), or share the GPUs, with --mem-fraction small enough
  for both (training preallocates 75% of each GPU's memory unless told otherwise).

Common options:
  --dry-run    print the commands (one per line, ready to paste), run nothing
  -h, --help   this help

Examples:
  launch/eval_beside.sh tpu --create --accelerator-type v4-8 --name cfg-in64-eval \
      --zone us-central2-b --config configs/imagenet64.py:p_uncond=0.2 \
      --workdir gs://BUCKET/cfg_in64_p02 --data-dir gs://BUCKET/tensorflow_datasets \
      -- --config.evaluation.inception_weights=gs://BUCKET/inception.npz
  launch/eval_beside.sh slurm --gpus-per-node 2 --config configs/cifar10.py \
      --workdir /shared/runs/cfg_cifar10
  launch/eval_beside.sh local --gpus 7 --config configs/cifar10.py --workdir runs/cfg_cifar10
EOF
}

POLL="--config.evaluation.poll=True"

# Splits "$@" into OPTIONS (before --) and AFTER (after --).
split_dashdash() {
  OPTIONS=()
  AFTER=()
  while (( $# )); do
    if [[ "$1" == -- ]]; then
      shift
      AFTER=("$@")
      return
    fi
    OPTIONS+=("$1")
    shift
  done
}

target_tpu() {
  local create=0 accelerator=() rest=() dry=()
  normalize_args "${OPTIONS[@]}"
  set -- "${NORMALIZED_ARGS[@]}"
  while (( $# )); do
    case "$1" in
      --create) create=1; shift ;;
      --accelerator-type|--version) need_value "$1" $# "${2-}"; accelerator+=("$1" "$2"); shift 2 ;;
      --spot) accelerator+=("$1"); shift ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  if [[ "$DRY_RUN" == 1 ]]; then dry=(--dry-run); fi
  if (( create )); then
    "$HERE/tpu_pod.sh" create "${accelerator[@]}" "${rest[@]}" "${dry[@]}"
    "$HERE/tpu_pod.sh" setup "${rest[@]}" "${dry[@]}"
  elif (( ${#accelerator[@]} )); then
    die "--accelerator-type, --version and --spot only matter with --create"
  fi
  # tpu_pod.sh evaluate adds --config.evaluation.poll=True itself.
  "$HERE/tpu_pod.sh" evaluate "${rest[@]}" "${dry[@]}" -- "${AFTER[@]}"
}

target_slurm() {
  local defaults=() dry=() has_nodes=0 has_gpus=0 opt
  for opt in "${OPTIONS[@]}"; do
    case "$opt" in
      --nodes|--nodes=*) has_nodes=1 ;;
      --gpus-per-node|--gpus-per-node=*) has_gpus=1 ;;
      --mode|--mode=*) die "eval_beside.sh slurm always runs --mode=evaluate; drop '$opt'" ;;
    esac
  done
  if (( ! has_nodes )) && [[ -z "${CFG_JAX_NODES:-}" ]]; then defaults+=(--nodes=1); fi
  if (( ! has_gpus )) && [[ -z "${CFG_JAX_GPUS_PER_NODE:-}" ]]; then defaults+=(--gpus-per-node=1); fi
  if [[ "$DRY_RUN" == 1 ]]; then dry=(--dry-run); fi
  "$HERE/slurm_gpu.sh" --mode=evaluate "${defaults[@]}" "${OPTIONS[@]}" "${dry[@]}" \
    -- "$POLL" "${AFTER[@]}"
}

target_local() {
  local config="${CFG_JAX_CONFIG:-}" workdir="${CFG_JAX_WORKDIR:-}" data_dir="${CFG_JAX_DATA_DIR:-}"
  local gpus="${CFG_JAX_EVAL_GPUS:-}" mem_fraction="${CFG_JAX_EVAL_MEM_FRACTION:-}"
  local root python log
  root="$(repo_root)"
  python="${CFG_JAX_PYTHON:-$root/.venv/bin/python}"
  log="${CFG_JAX_EVAL_LOG:-$root/runs/eval_beside.log}"
  normalize_args "${OPTIONS[@]}"
  set -- "${NORMALIZED_ARGS[@]}"
  while (( $# )); do
    case "$1" in
      --config) need_value "$1" $# "${2-}"; config="$2"; shift 2 ;;
      --workdir) need_value "$1" $# "${2-}"; workdir="$2"; shift 2 ;;
      --data-dir) need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      --gpus) need_value "$1" $# "${2-}"; gpus="$2"; shift 2 ;;
      --mem-fraction) need_value "$1" $# "${2-}"; mem_fraction="$2"; shift 2 ;;
      --python) need_value "$1" $# "${2-}"; python="$2"; shift 2 ;;
      --log) need_value "$1" $# "${2-}"; log="$2"; shift 2 ;;
      *) die "unknown option '$1' for the local target (see --help; cfg_jax.main flags go after --)" ;;
    esac
  done
  [[ -n "$config" ]] || die "missing --config (or CFG_JAX_CONFIG): the training run's config"
  [[ -n "$workdir" ]] || die "missing --workdir (or CFG_JAX_WORKDIR): the training run's workdir"
  if [[ -n "$gpus" && ! "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
    die "--gpus must be a comma-separated list of GPU numbers such as 7 or 6,7, got '$gpus'"
  fi
  if [[ -n "$mem_fraction" && ! "$mem_fraction" =~ ^0?\.[0-9]+$ ]]; then
    die "--mem-fraction must be a fraction between 0 and 1 such as 0.2, got '$mem_fraction'"
  fi
  if [[ "$DRY_RUN" != 1 && ! -x "$python" ]]; then
    die "no Python at '$python': pass --python (a venv with cfg_jax and jax[cuda12])"
  fi
  local env_vars=() args=("--config=$config" "--workdir=$workdir" --mode=evaluate "$POLL")
  if [[ -n "$gpus" ]]; then env_vars+=("CUDA_VISIBLE_DEVICES=$gpus"); fi
  if [[ -n "$mem_fraction" ]]; then env_vars+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction"); fi
  if [[ -n "$data_dir" ]]; then args+=("--config.data.data_dir=$data_dir"); fi
  args+=("${AFTER[@]}")
  local cmd=(nohup env "${env_vars[@]}" "$python" -m cfg_jax.main "${args[@]}")
  run cd "$root"
  run mkdir -p "$(dirname "$log")"
  # Detached, output to the log: shown as the shell line it corresponds to.
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s > %s 2>&1 < /dev/null &\n' "$(quote "${cmd[@]}")" "$(quote "$log")"
  else
    printf '+ %s > %s 2>&1 < /dev/null &\n' "$(quote "${cmd[@]}")" "$(quote "$log")" >&2
    "${cmd[@]}" > "$log" 2>&1 < /dev/null &
    printf 'evaluation job started: pid %s, log %s\n' "$!" "$log"
  fi
}

main() {
  local target="" arg
  DRY_RUN=0
  split_dashdash "$@"
  local given=("${OPTIONS[@]}")
  OPTIONS=()
  for arg in "${given[@]}"; do
    case "$arg" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      *) OPTIONS+=("$arg") ;;
    esac
  done
  # The target comes first: `eval_beside.sh tpu --name ...`.
  if (( ${#OPTIONS[@]} )) && [[ "${OPTIONS[0]}" != -* ]]; then
    target="${OPTIONS[0]}"
    OPTIONS=("${OPTIONS[@]:1}")
  fi
  case "$target" in
    tpu) target_tpu ;;
    slurm) target_slurm ;;
    local) target_local ;;
    "") usage >&2; die "missing target: tpu, slurm or local" ;;
    *) die "unknown target '$target': use tpu, slurm or local" ;;
  esac
}

main "$@"
