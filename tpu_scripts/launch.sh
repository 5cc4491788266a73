#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the same training command on every worker (in the background, one log per worker).
#   ZONE=... tpu_scripts/launch.sh configs/smoke.yaml train.steps=200 run_dir=/mnt/runs/run1
# run_dir must be the same shared folder on every worker (gcsfuse / Filestore mount): every
# process writes its shards of each orbax checkpoint there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: $(basename "$0") CONFIG.yaml [key.path=value ...] [--skip-validate] [common flags]
On every worker, in ~/\$REMOTE_DIR:
  nohup python3 -m jaxrl_lrm train CONFIG [overrides] --distributed > ~/\$LOG_DIR/train-HOST.log
(--distributed: jax.distributed.initialize() from the TPU environment, one process per host).
CONFIG is a path relative to the repo on the workers. Fetch logs with tpu_scripts/logs.sh.
Before anything reaches the pod, the config and overrides are validated here, in this checkout
(\$LOCAL_PYTHON -m jaxrl_lrm config show ..., LOCAL_PYTHON default python3);
--skip-validate skips that (e.g. no jaxrl_lrm installed locally)."

parse_common "$@"
[[ ${#REST[@]} -ge 1 ]] || usage "missing CONFIG"
config="${REST[0]}"
[[ "$config" == *.yaml || "$config" == *.yml ]] ||
  usage "CONFIG '$config' is not a .yaml/.yml file (expected e.g. configs/smoke.yaml)"
train=(python3 -m jaxrl_lrm train "$config")
validate=1
for arg in "${REST[@]:1}"; do
  if [[ "$arg" == --skip-validate ]]; then
    validate=0
    continue
  fi
  [[ "$arg" =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.* ]] ||
    usage "override '$arg' is not key.path=value"
  train+=("$arg")
done
check_common
if [[ "$validate" == 1 ]]; then
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if ! out="$(cd "$repo" && "${LOCAL_PYTHON:-python3}" -m jaxrl_lrm config show "${train[@]:4}" 2>&1)"; then
    echo "$(basename "$0"): error: the config does not validate (nothing was sent to the pod):" >&2
    echo "$out" | tail -n 5 >&2
    exit 2
  fi
fi
train+=(--distributed)

dir="$(printf '%q' "$REMOTE_DIR")"
logs="$(printf '%q' "$LOG_DIR")"
cmd="$(printf '%q ' "${train[@]}")"
tpu_ssh all "set -e; mkdir -p ~/$logs; cd ~/$dir; \
nohup ${cmd% } > ~/$logs/train-\$(hostname).log 2>&1 < /dev/null & \
echo \"\$(hostname): started pid \$! -> ~/$logs/train-\$(hostname).log\""
