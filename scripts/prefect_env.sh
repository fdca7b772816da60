# shellcheck shell=bash disable=SC2034  # sourced: the names set here are read by the sourcing script
# Settings shared by scripts/server.sh and scripts/dataset.sh (sourced, not run).
#   TRACKGO_PREFECT_PORT (4200), TRACKGO_PREFECT_HOST (127.0.0.1; 0.0.0.0 only to expose the
#   server), TRACKGO_PREFECT_DIR (.prefect), PREFECT_BIN (.venv/bin/prefect),
#   TRACKGO_PREFECT_DB (sqlite | postgres: the server's database), TRACKGO_PG_BIN (folder of
#   PostgreSQL's initdb/pg_ctl; default: the newest /usr/lib/postgresql/*/bin, else PATH),
#   TRACKGO_PG_USER (the OS user PostgreSQL runs as when this script runs as root; postgres)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || return 1
PORT="${TRACKGO_PREFECT_PORT:-4200}"
HOST="${TRACKGO_PREFECT_HOST:-127.0.0.1}"
STATE="${TRACKGO_PREFECT_DIR:-$ROOT/.prefect}"
PREFECT="${PREFECT_BIN:-$ROOT/.venv/bin/prefect}"
DB="${TRACKGO_PREFECT_DB:-sqlite}"
case "$DB" in sqlite|postgres) ;; *) echo "TRACKGO_PREFECT_DB must be sqlite or postgres, not '$DB'" >&2; exit 2 ;; esac
# clients reach a server bound to every interface through loopback
CLIENT_HOST="$HOST"
[[ "$HOST" == "0.0.0.0" ]] && CLIENT_HOST=127.0.0.1
API_URL="http://$CLIENT_HOST:$PORT/api"
UI_URL="http://$CLIENT_HOST:$PORT"
