#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Shows (or fetches) the training logs of every worker.
#   ZONE=... tpu_scripts/logs.sh [--lines N] [--follow] [--worker W] [--fetch LOCAL_DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: $(basename "$0") [--lines N] [--follow] [--worker W] [--fetch LOCAL_DIR] [common flags]
  --lines N          last N lines of each worker's log (default 20)
  --follow           keep following (tail -F; Ctrl-C to stop)
  --worker W         one worker index instead of all
  --fetch LOCAL_DIR  copy every worker's ~/\$LOG_DIR/*.log into LOCAL_DIR instead"

LINES=20
FOLLOW=0
WORKER=all
FETCH=""
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --follow) FOLLOW=1; shift ;;
    --lines|--worker|--fetch)
      [[ $# -ge 2 && -n "$2" ]] || usage "$1 needs a value"
      case "$1" in
        --lines) LINES="$2" ;;
        --worker) WORKER="$2" ;;
        --fetch) FETCH="$2" ;;
      esac
      shift 2 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done
[[ "$LINES" =~ ^[0-9]+$ ]] || usage "--lines '$LINES': expected a non-negative integer"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] ||
  usage "--worker '$WORKER': expected a worker index or 'all'"
check_common

logs="$(printf '%q' "$LOG_DIR")"
if [[ -n "$FETCH" ]]; then
  run mkdir -p "$FETCH"
  gc compute tpus tpu-vm scp "$TPU_NAME:$LOG_DIR/*.log" "$FETCH/" --zone="$ZONE" \
    --worker="$WORKER"
elif [[ "$FOLLOW" == 1 ]]; then
  tpu_ssh "$WORKER" "tail -n $LINES -F ~/$logs/*.log"
else
  tpu_ssh "$WORKER" "tail -n $LINES ~/$logs/*.log"
fi
