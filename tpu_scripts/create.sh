#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates a TPU VM or pod slice (all workers), directly or through a queued resource.
#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 tpu_scripts/create.sh [--spot] [--queued]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: $(basename "$0") [--spot] [--queued] [common flags]
Creates the TPU VM / pod slice \$TPU_NAME of type \$ACCELERATOR_TYPE in \$ZONE.
  --spot     spot (preemptible) capacity: cheaper, may be reclaimed at any time
  --queued   request it as a queued resource named \$TPU_NAME-qr (waits for capacity;
             watch it with: gcloud compute tpus queued-resources describe \$TPU_NAME-qr)"

SPOT=0
QUEUED=0
parse_common "$@"
for arg in "${REST[@]+"${REST[@]}"}"; do
  case "$arg" in
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    *) usage "unknown argument '$arg'" ;;
  esac
done
check_common

extra=()
if [[ "$SPOT" == 1 ]]; then extra+=(--spot); fi
if [[ "$QUEUED" == 1 ]]; then
  gc compute tpus queued-resources create "${TPU_NAME}-qr" --node-id="$TPU_NAME" \
    --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" "${extra[@]+"${extra[@]}"}"
else
  gc compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    "${extra[@]+"${extra[@]}"}"
fi
