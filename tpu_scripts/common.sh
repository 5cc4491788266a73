# shellcheck shell=bash
# Shared settings and argument checking for the tpu_scripts/*.sh (sourced, not run).
#
# Every setting comes from an environment variable, overridable by a flag:
#   PROJECT          --project P          GCP project (default: gcloud's configured project)
#   ZONE             --zone Z             e.g. us-central2-b (v4), us-west4-a (v5e)
#   TPU_NAME         --name N             TPU VM / pod slice name              [jaxrl-lrm]
#   ACCELERATOR_TYPE --accelerator-type A e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8 [v4-8]
#   RUNTIME_VERSION  --runtime-version R  TPU VM image                         [tpu-ubuntu2204-base]
#   REPO_URL         --repo-url U         git URL cloned on every worker
#   BRANCH           --branch B           branch or tag to check out           [main]
#   REMOTE_DIR       --remote-dir D       checkout on the workers              [jaxrl_lrm] (in ~)
#   LOG_DIR          --log-dir D          log folder on the workers            [jaxrl_lrm_logs] (in ~)
#   DRY_RUN=1        --dry-run            print the commands instead of running them
#   GCLOUD                                the gcloud binary                    [gcloud]

set -euo pipefail

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
TPU_NAME="${TPU_NAME:-jaxrl-lrm}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-jaxrl_lrm}"
LOG_DIR="${LOG_DIR:-jaxrl_lrm_logs}"
DRY_RUN="${DRY_RUN:-0}"
GCLOUD="${GCLOUD:-gcloud}"

COMMON_FLAGS_HELP="Common flags (or the environment variables in tpu_scripts/common.sh):
  --project P  --zone Z  --name N  --accelerator-type A  --runtime-version R
  --repo-url U  --branch B  --remote-dir D  --log-dir D  --dry-run  -h|--help"

# usage [MESSAGE]: prints the calling script's USAGE (and MESSAGE) to stderr, exits 2.
usage() {
  if [[ $# -gt 0 ]]; then echo "$(basename "$0"): error: $*" >&2; fi
  printf '%s\n\n%s\n' "${USAGE:-usage: $(basename "$0") [flags]}" "$COMMON_FLAGS_HELP" >&2
  exit 2
}

# _set_flag FLAG VALUE: stores one common flag's value.
_set_flag() {
  [[ -n "$2" ]] || usage "$1 needs a value"
  case "$1" in
    --project) PROJECT="$2" ;;
    --zone) ZONE="$2" ;;
    --name) TPU_NAME="$2" ;;
    --accelerator-type) ACCELERATOR_TYPE="$2" ;;
    --runtime-version) RUNTIME_VERSION="$2" ;;
    --repo-url) REPO_URL="$2" ;;
    --branch) BRANCH="$2" ;;
    --remote-dir) REMOTE_DIR="$2" ;;
    --log-dir) LOG_DIR="$2" ;;
  esac
}

COMMON_VALUE_FLAGS=" --project --zone --name --accelerator-type --runtime-version --repo-url \
--branch --remote-dir --log-dir "

# parse_common "$@": consumes the common flags; everything else is left in REST (in order).
parse_common() {
  REST=()
  while [[ $# -gt 0 ]]; do
    if [[ "$1" == -h || "$1" == --help ]]; then
      printf '%s\n\n%s\n' "${USAGE:-}" "$COMMON_FLAGS_HELP"
      exit 0
    elif [[ "$1" == --dry-run ]]; then
      DRY_RUN=1
      shift
    elif [[ "$1" == --*=* && "$COMMON_VALUE_FLAGS" == *" ${1%%=*} "* ]]; then
      _set_flag "${1%%=*}" "${1#*=}"
      shift
    elif [[ "$COMMON_VALUE_FLAGS" == *" $1 "* ]]; then
      [[ $# -ge 2 ]] || usage "$1 needs a value"
      _set_flag "$1" "$2"
      shift 2
    else
      REST+=("$1")
      shift
    fi
  done
}

# check_common: validates the settings every script needs.
check_common() {
  [[ -n "$ZONE" ]] || usage "no zone: set ZONE or pass --zone (e.g. us-central2-b)"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    usage "TPU name '$TPU_NAME' is invalid: expected lowercase letters, digits and '-'"
  [[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
    usage "accelerator type '$ACCELERATOR_TYPE' is invalid: expected e.g. v4-32, v5litepod-16, v5p-8"
  [[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || usage "DRY_RUN='$DRY_RUN': expected 0 or 1"
}

# run CMD...: runs CMD, or with DRY_RUN=1 prints it shell-quoted (one line, copy-pasteable).
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local out
    out="$(printf '%q ' "$@")"
    echo "${out% }"
  else
    "$@"
  fi
}

# gc ARGS...: `gcloud ARGS... [--project=P]` through `run`.
gc() {
  local extra=()
  if [[ -n "$PROJECT" ]]; then extra+=("--project=$PROJECT"); fi
  run "$GCLOUD" "$@" "${extra[@]+"${extra[@]}"}"
}

# tpu_ssh WORKER REMOTE_COMMAND: runs REMOTE_COMMAND on one worker index or on "all".
tpu_ssh() {
  gc compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}
