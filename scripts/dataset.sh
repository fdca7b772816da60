#!/usr/bin/env bash
# `make dataset`: build the training set through the Prefect deployment build-dataset/local.
#
#   bash scripts/dataset.sh [SOURCE] [OUT] [PROFILE]
#     SOURCE   folder, glob or list file of videos; empty = the bundled sample videos
#     OUT      output folder (default data/sample)
#     PROFILE  local (offline backends, default) | paper (DEVA + Co-Tracker3; needs their weights)
#   TRACKGO_DATASET_PARAMS="num_frames=8 width=256 height=144"   extra flow parameters (optional)
#
# Brings the local server + worker up if needed (scripts/server.sh), runs the deployment, waits for
# the flow run to finish, and prints where the shards, the manifest and the flow-run page are.
set -euo pipefail

# shellcheck source=scripts/prefect_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/prefect_env.sh"
SOURCE="${1:-}"
OUT="${2:-data/sample}"
PROFILE="${3:-local}"

[[ -z "$SOURCE" ]] && SOURCE=samples
if [[ "$SOURCE" != samples && "$SOURCE" != *[*?[]* ]]; then
  [[ -e "$SOURCE" ]] || { echo "[dataset.sh] source $SOURCE does not exist" >&2; exit 2; }
  SOURCE="$(realpath "$SOURCE")"
fi
OUT="$(realpath -m "$OUT")"

bash "$ROOT/scripts/server.sh" up

params=(--param "source=$SOURCE" --param "output=$OUT" --param "profile=$PROFILE")
for kv in ${TRACKGO_DATASET_PARAMS:-}; do params+=(--param "$kv"); done

mkdir -p "$STATE/logs"
runlog="$STATE/logs/dataset-$(date +%Y%m%d-%H%M%S).log"
echo "[dataset.sh] prefect deployment run build-dataset/local ${params[*]} --watch (log $runlog)"
set +e
PREFECT_API_URL="$API_URL" "$PREFECT" deployment run build-dataset/local "${params[@]}" --watch \
  2>&1 | tee "$runlog"
rc=${PIPESTATUS[0]}
set -e
run_id="$(grep -oE 'UUID: [0-9a-f-]{36}' "$runlog" | head -1 | cut -d' ' -f2 || true)"

echo
if [[ -n "$run_id" ]]; then echo "flow run:  $UI_URL/runs/flow-run/$run_id"
else echo "flow run:  (no flow run id found; see $runlog)"; fi
echo "shards:    $OUT/shards/"
echo "manifest:  $OUT/manifest.parquet"
echo "summary:   $OUT/summary.json"
echo "previews:  $OUT/previews/"
if [[ $rc -ne 0 ]]; then
  echo "[dataset.sh] the flow run did not complete (exit $rc); see the flow-run page and $STATE/logs/worker.log" >&2
  exit "$rc"
fi
