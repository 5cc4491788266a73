#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the training processes started by launch.sh on every worker (the TPU stays up).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: $(basename "$0") [common flags]
Sends SIGTERM to 'python3 -m jaxrl_lrm train' on every worker: the trainer saves a checkpoint
and exits, and a later launch.sh resumes from it."

parse_common "$@"
[[ ${#REST[@]} -eq 0 ]] || usage "unknown argument '${REST[0]}'"
check_common
tpu_ssh all "pkill -TERM -f '[p]ython3 -m jaxrl_lrm train' || echo \"\$(hostname): not running\""
