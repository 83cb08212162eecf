# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run).
#
# Every command a script would run goes through `run`, so --dry-run can print exactly what a real
# run executes, one command per line, quoted so each line can be pasted into a shell.

# Empty arrays under `set -u` and other features below need bash >= 4.4; macOS ships 3.2.
if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4) )); then
  printf 'error: bash %s is too old for the launch scripts: they need bash >= 4.4 (on macOS: brew install bash, then run them again)\n' "$BASH_VERSION" >&2
  exit 2
fi

# Prints an error naming the problem (and, by convention, the fix) and exits with status 2.
die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

warn() {
  printf 'warning: %s\n' "$*" >&2
}

# Shell-quotes one word: words made only of characters no shell treats specially stay bare
# (readable); in `--flag=value` only the value is quoted; anything else is single-quoted.
quote_word() {
  local word="$1"
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  elif [[ "$word" =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Shell-quotes each argument and joins them with spaces.
quote() {
  local out="" word
  for word in "$@"; do
    out+="$(quote_word "$word") "
  done
  printf '%s' "${out% }"
}

# Runs a command, or with DRY_RUN=1 only prints it. Real runs echo the command to stderr first.
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    "$@"
  fi
}

# Fails early, before anything is created, when a tool a real run needs is missing.
need_tool() {
  local tool="$1" hint="$2"
  if [[ "${DRY_RUN:-0}" != 1 ]] && ! command -v "$tool" >/dev/null 2>&1; then
    die "'$tool' not found on PATH: $hint (or use --dry-run to only print the commands)"
  fi
}

# Checks that an option got a value: `--zone` as the last argument, or followed by another
# option, must not silently take nothing or that option as its value.
need_value() {
  local flag="$1" count="$2" value="${3-}"
  if (( count < 2 )) || [[ "$value" == --* ]]; then
    die "$flag needs a value"
  fi
}

# A positive integer, or a clear error naming the flag.
check_positive_int() {
  local flag="$1" value="$2"
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    die "$flag must be a positive integer, got '$value'"
  fi
}

# The repository root: the parent of the directory holding the launch scripts.
repo_root() {
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  dirname "$here"
}

# Rewrites `--flag=value` into `--flag value` up to a bare `--` (everything after it is kept as
# is), so each script's option loop handles one form. Result in the array NORMALIZED_ARGS.
normalize_args() {
  NORMALIZED_ARGS=()
  while (( $# )); do
    case "$1" in
      --) NORMALIZED_ARGS+=("$@"); return ;;
      --*=*) NORMALIZED_ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) NORMALIZED_ARGS+=("$1") ;;
    esac
    shift
  done
}
