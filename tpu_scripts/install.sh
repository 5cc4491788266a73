#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs the repo and JAX for TPU on every worker of $TPU_NAME.
#   REPO_URL=https://github.com/you/jaxrl_lrm ZONE=... tpu_scripts/install.sh
#   ZONE=... tpu_scripts/install.sh --from-local      # copy this checkout instead of cloning
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JAX_TPU_SPEC="${JAX_TPU_SPEC:-jax[tpu]>=0.10.2,<0.11}"
USAGE="usage: $(basename "$0") [--from-local] [common flags]
On every worker: clone \$REPO_URL at \$BRANCH into ~/\$REMOTE_DIR (or update it), then
pip install -e ~/\$REMOTE_DIR \"\$JAX_TPU_SPEC\" (default: '$JAX_TPU_SPEC').
  --from-local   copy this checkout (a tarball of the tracked files) instead of cloning"

FROM_LOCAL=0
parse_common "$@"
for arg in "${REST[@]+"${REST[@]}"}"; do
  case "$arg" in
    --from-local) FROM_LOCAL=1 ;;
    *) usage "unknown argument '$arg'" ;;
  esac
done
check_common
if [[ "$FROM_LOCAL" == 0 && -z "$REPO_URL" ]]; then
  usage "no repository: set REPO_URL (or --repo-url), or pass --from-local"
fi

dir="$(printf '%q' "$REMOTE_DIR")"
if [[ "$FROM_LOCAL" == 1 ]]; then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tarball="${TMPDIR:-/tmp}/jaxrl_lrm_src.tar.gz"
  run git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
  gc compute tpus tpu-vm scp "$tarball" "$TPU_NAME:jaxrl_lrm_src.tar.gz" --zone="$ZONE" \
    --worker=all
  fetch="mkdir -p ~/$dir && tar -xzf ~/jaxrl_lrm_src.tar.gz -C ~/$dir"
else
  url="$(printf '%q' "$REPO_URL")"
  branch="$(printf '%q' "$BRANCH")"
  fetch="if [ -d ~/$dir/.git ]; then git -C ~/$dir fetch origin $branch && \
git -C ~/$dir checkout -B $branch FETCH_HEAD; else git clone --branch $branch $url ~/$dir; fi"
fi
spec="$(printf '%q' "$JAX_TPU_SPEC")"
tpu_ssh all "set -e; $fetch; python3 -m pip install -q -U pip; \
python3 -m pip install -q -e ~/$dir $spec; \
python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].platform)'"
