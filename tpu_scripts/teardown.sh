#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the TPU VM / pod slice (and its queued resource when created with --queued).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: $(basename "$0") [--queued] [--yes] [common flags]
Deletes \$TPU_NAME in \$ZONE. Anything on the workers' disks is lost.
  --queued   delete the queued resource \$TPU_NAME-qr (and its node) instead
  --yes      do not ask for confirmation"

QUEUED=0
YES=0
parse_common "$@"
for arg in "${REST[@]+"${REST[@]}"}"; do
  case "$arg" in
    --queued) QUEUED=1 ;;
    --yes) YES=1 ;;
    *) usage "unknown argument '$arg'" ;;
  esac
done
check_common

quiet=()
if [[ "$YES" == 1 ]]; then quiet+=(--quiet); fi
if [[ "$QUEUED" == 1 ]]; then
  gc compute tpus queued-resources delete "${TPU_NAME}-qr" --zone="$ZONE" --force \
    "${quiet[@]+"${quiet[@]}"}"
else
  gc compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${quiet[@]+"${quiet[@]}"}"
fi
