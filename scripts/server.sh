#!/usr/bin/env bash
# Local Prefect server + process worker for the TrackGo deployments.
#
#   bash scripts/server.sh up       start server + worker and deploy */local (already running -> nothing)
#   bash scripts/server.sh down     stop exactly the processes `up` started (recorded pids), and the
#                                   PostgreSQL cluster when `up` started one
#   bash scripts/server.sh status   say what runs, where, and where the logs are
#   bash scripts/server.sh deploy   re-register the */local deployments (after changing parameters)
#
# Database: TRACKGO_PREFECT_DB=sqlite (default: Prefect's embedded SQLite file in the state folder)
# or postgres (`make server DB=postgres`: a private PostgreSQL cluster started and stopped with the
# server by scripts/postgres.sh — the production database for runs of thousands of batches).
# Server state (database, logs, pids) lives in the project: $TRACKGO_PREFECT_DIR (default
# .prefect/). `up` also creates and activates a Prefect profile (default "trackgo") whose
# PREFECT_API_URL points at this server, so a plain `prefect deployment run build-dataset/local ...`
# from the project's environment reaches it; `down` re-activates the profile that was active before.
#
# Environment: TRACKGO_PREFECT_PORT (4200), TRACKGO_PREFECT_HOST (127.0.0.1; set 0.0.0.0 only if
# you mean to expose the server), TRACKGO_PREFECT_DIR (.prefect), TRACKGO_PREFECT_PROFILE (trackgo),
# TRACKGO_WORK_POOL (trackgo-local), PREFECT_BIN (.venv/bin/prefect), TRACKGO_PREFECT_DB (sqlite),
# TRACKGO_GPU_BATCHES (when set: a tag concurrency limit of that many running batches on the tag
# trackgo-gpu, which the build-dataset parameter concurrency_tag=trackgo-gpu puts on its batches).
set -euo pipefail

# shellcheck source=scripts/prefect_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/prefect_env.sh"
PROFILE="${TRACKGO_PREFECT_PROFILE:-trackgo}"
POOL="${TRACKGO_WORK_POOL:-trackgo-local}"
PY="$(dirname "$PREFECT")/python"
# entrypoints of the */local deployments in prefect.yaml (a missing flow file is skipped)
LOCAL_DEPLOYMENTS="flows/build_dataset.py:build_dataset_flow flows/train.py:train_flow flows/eval_vipseg.py:eval_vipseg_flow"
mkdir -p "$STATE/logs" "$STATE/run"
STATE="$(cd "$STATE" && pwd)"
LOGS="$STATE/logs"
RUN="$STATE/run"

# The server and worker keep their database/storage in the project; the profiles file stays the
# user's (PREFECT_PROFILES_PATH is resolved before PREFECT_HOME is changed for the children).
PROFILES_PATH="${PREFECT_PROFILES_PATH:-${PREFECT_HOME:-$HOME/.prefect}/profiles.toml}"

log() { echo "[server.sh] $*" >&2; }

[[ -x "$PREFECT" ]] || { log "prefect not found at $PREFECT (run 'make setup' first)"; exit 1; }

is_ours() {  # is_ours PID -> 0 if PID runs and is a prefect process (guards against pid reuse)
  kill -0 "$1" 2>/dev/null && ps -o args= -p "$1" 2>/dev/null | grep -q prefect
}

alive() {  # alive NAME -> 0 if the recorded pid runs
  local f="$RUN/$1.pid"
  [[ -s "$f" ]] && is_ours "$(cat "$f")"
}

healthy() {
  if command -v curl >/dev/null 2>&1; then
    curl -sf --max-time 2 "$API_URL/health" >/dev/null 2>&1
  else
    "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$API_URL/health" >/dev/null 2>&1
  fi
}

pf() {  # prefect CLI against this server, with the project's Prefect home
  PREFECT_HOME="$STATE" PREFECT_PROFILES_PATH="$PROFILES_PATH" PREFECT_API_URL="$API_URL" "$PREFECT" "$@"
}

# The server records task runs and events from the events its clients send, through an in-memory
# queue of 10,000 messages per consumer that drops what overflows. Prefect's defaults write task
# runs one per transaction (and events 20 at a time, flushed every 5 s): a flow submitting
# thousands of batches outruns that, the queue overflows and task runs are lost. Batched writes
# (any of these can be overridden from the environment) keep up with 10,000 batch task runs.
SERVER_TUNING=(
  PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="${PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE:-200}"
  PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL="${PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL:-1}"
  PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE="${PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE:-200}"
  PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="${PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL:-1}"
  PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
)

start_bg() {  # start_bg NAME CMD... : detached, own session, pid recorded
  local name="$1"; shift
  setsid nohup env PREFECT_HOME="$STATE" PREFECT_PROFILES_PATH="$PROFILES_PATH" PREFECT_API_URL="$API_URL" \
    "${SERVER_TUNING[@]}" "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

database_url() {  # the server's database: empty for SQLite (Prefect's default file in $STATE)
  if [[ "$DB" == postgres ]]; then
    touch "$RUN/postgres.started"
    bash "$ROOT/scripts/postgres.sh" up
  fi
}

stop_one() {  # stop_one NAME : TERM the recorded pid (and its process group), then KILL if needed
  local name="$1" f="$RUN/$1.pid" pid
  [[ -s "$f" ]] || return 0
  pid="$(cat "$f")"
  if is_ours "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

profile_py() {  # profile_py ACTION [NAME] : read/switch the active profile in the user's profiles file
  PREFECT_PROFILES_PATH="$PROFILES_PATH" "$PY" - "$@" <<'PYEOF'
import sys
from prefect.settings import PREFECT_API_URL
from prefect.settings.profiles import load_profiles, save_profiles

action, args = sys.argv[1], sys.argv[2:]
profiles = load_profiles()
if action == "active":
    print(profiles.active_name or "")
elif action == "point":          # point NAME URL: create/update NAME with PREFECT_API_URL, activate it
    name, url = args
    profiles.update_profile(name, settings={PREFECT_API_URL: url})
    profiles.set_active(name)
    save_profiles(profiles)
elif action == "use":            # use NAME
    profiles.set_active(args[0])
    save_profiles(profiles)
PYEOF
}

use_profile() {
  local current; current="$(profile_py active)"
  if [[ -n "$current" && "$current" != "$PROFILE" && ! -s "$RUN/previous_profile" ]]; then
    echo "$current" > "$RUN/previous_profile"
  fi
  profile_py point "$PROFILE" "$API_URL"
  log "profile '$PROFILE' active in $PROFILES_PATH (PREFECT_API_URL=$API_URL)"
}

deploy() {
  pf --no-prompt work-pool create "$POOL" --type process >/dev/null 2>&1 || true   # exists: fine
  if [[ -n "${TRACKGO_GPU_BATCHES:-}" ]]; then
    pf concurrency-limit create trackgo-gpu "$TRACKGO_GPU_BATCHES" >/dev/null \
      && log "tag concurrency limit: at most $TRACKGO_GPU_BATCHES running batches tagged trackgo-gpu"
  fi
  # Register the */local deployments of prefect.yaml whose flow file exists. `prefect deploy
  # --name` matches "<entrypoint function>/<deployment name>".
  local names=() entry
  for entry in $LOCAL_DEPLOYMENTS; do
    [[ -f "${entry%%:*}" ]] && names+=(--name "${entry##*:}/local")
  done
  log "deploying $(( ${#names[@]} / 2 )) local deployment(s) from prefect.yaml (log $LOGS/deploy.log)"
  pf --no-prompt deploy "${names[@]}" >>"$LOGS/deploy.log" 2>&1 \
    || { log "deploy failed; see $LOGS/deploy.log"; tail -20 "$LOGS/deploy.log" >&2; exit 1; }
}

up() {
  local running_db; running_db="$(cat "$RUN/server.db" 2>/dev/null || echo sqlite)"
  if alive server && [[ "$running_db" != "$DB" ]]; then
    log "the server runs on $running_db, not $DB: stop it first (bash $0 down)"; exit 1
  fi
  if alive server && healthy && alive worker; then
    log "already running: server $UI_URL on $DB (pid $(cat "$RUN/server.pid")), worker (pid $(cat "$RUN/worker.pid"))"
    [[ "$(profile_py active)" == "$PROFILE" ]] || use_profile
    return 0
  fi
  if alive server && healthy; then
    log "server already running at $UI_URL (pid $(cat "$RUN/server.pid"))"
  else
    stop_one server
    if healthy; then
      log "something else already answers on $API_URL; set TRACKGO_PREFECT_PORT to another port"; exit 1
    fi
    local url; url="$(database_url)"
    log "starting Prefect server on $HOST:$PORT with $DB (state in $STATE, log $LOGS/server.log)"
    echo "$DB" > "$RUN/server.db"
    if [[ -n "$url" ]]; then
      PREFECT_API_DATABASE_CONNECTION_URL="$url" start_bg server "$PREFECT" server start --host "$HOST" --port "$PORT"
    else
      start_bg server "$PREFECT" server start --host "$HOST" --port "$PORT"
    fi
    for _ in $(seq 1 480); do healthy && break; alive server || break; sleep 0.5; done
    healthy || { log "server did not come up; see $LOGS/server.log"; tail -20 "$LOGS/server.log" >&2; stop_one server; exit 1; }
  fi
  use_profile
  deploy
  log "starting process worker for pool '$POOL' (log $LOGS/worker.log)"
  # poll every 2 s (default 10): the server is local, and runs should start promptly
  PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}" \
    start_bg worker "$PREFECT" worker start --pool "$POOL" --type process
  sleep 1
  alive worker || { log "worker exited; see $LOGS/worker.log"; tail -20 "$LOGS/worker.log" >&2; exit 1; }
  status
}

down() {
  stop_one worker
  stop_one server
  rm -f "$RUN/server.db"
  if [[ -e "$RUN/postgres.started" ]]; then
    bash "$ROOT/scripts/postgres.sh" down
    rm -f "$RUN/postgres.started"
  fi
  if [[ -s "$RUN/previous_profile" ]]; then
    local prev; prev="$(cat "$RUN/previous_profile")"
    profile_py use "$prev" 2>/dev/null && log "profile '$prev' active again"
    rm -f "$RUN/previous_profile"
  fi
  log "down"
}

status() {
  local s=stopped w=stopped
  alive server && s="running (pid $(cat "$RUN/server.pid"))"
  alive worker && w="running (pid $(cat "$RUN/worker.pid"))"
  healthy || [[ "$s" == stopped ]] || s="$s, not answering yet"
  echo "server: $s  UI $UI_URL  API $API_URL  database $(cat "$RUN/server.db" 2>/dev/null || echo "$DB")"
  if [[ -e "$RUN/postgres.started" ]]; then bash "$ROOT/scripts/postgres.sh" status; fi
  echo "worker: $w  pool $POOL"
  echo "logs:   $LOGS/{server,worker,deploy}.log"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  deploy) healthy || { log "server not running (bash $0 up)"; exit 1; }; deploy ;;
  *) echo "usage: $0 up|down|status|deploy" >&2; exit 2 ;;
esac
