#!/usr/bin/env bash
# A private PostgreSQL cluster for the Prefect server (`make server DB=postgres`); never the
# system's PostgreSQL service.
#
#   bash scripts/postgres.sh up       initdb on first use, start, create the database; prints its URL
#   bash scripts/postgres.sh down     stop it (fast shutdown: open transactions are rolled back)
#   bash scripts/postgres.sh status   say whether it runs, where its data and log are
#   bash scripts/postgres.sh url      the SQLAlchemy URL Prefect connects with
#   bash scripts/postgres.sh destroy  stop it and delete its data
#
# The cluster lives in $TRACKGO_PREFECT_DIR/postgres (data/, postgres.log) and listens on a unix
# socket only, in a private folder (no TCP port is opened): database "prefect", role "prefect",
# trust authentication on that socket. PostgreSQL refuses to run as root: when this script runs as
# root, the server runs as $TRACKGO_PG_USER (default postgres, the user Debian's package creates),
# and the cluster moves to /var/tmp/trackgo-postgres-<hash> when that user cannot reach
# $TRACKGO_PREFECT_DIR. Binaries: $TRACKGO_PG_BIN, else the newest /usr/lib/postgresql/*/bin
# (Debian: apt-get install postgresql), else initdb on PATH. TRACKGO_PG_PORT (5432) only names
# the socket file.
set -euo pipefail

# shellcheck source=scripts/prefect_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/prefect_env.sh"
PG_USER="${TRACKGO_PG_USER:-postgres}"
PG_PORT="${TRACKGO_PG_PORT:-5432}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

log() { echo "[postgres.sh] $*" >&2; }

pg_bin() {
  local dir
  if [[ -n "${TRACKGO_PG_BIN:-}" ]]; then dir="$TRACKGO_PG_BIN"
  else
    dir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    [[ -x "$dir/initdb" ]] || dir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  fi
  [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] || {
    log "PostgreSQL is not installed (no initdb/pg_ctl found): apt-get install postgresql, or set TRACKGO_PG_BIN"
    exit 1; }
  echo "$dir"
}

as_pg() {  # run a server-side command as the cluster's owner
  if [[ $EUID -eq 0 ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

pg_root() {
  if [[ $EUID -eq 0 ]] && ! runuser -u "$PG_USER" -- test -x "$STATE" 2>/dev/null; then
    echo "/var/tmp/trackgo-postgres-$(printf %s "$STATE" | sha256sum | cut -c1-12)"
  else
    echo "$STATE/postgres"
  fi
}

sock_dir() {  # unix socket paths are limited to ~107 bytes
  local dir="$1/run"
  if (( ${#dir} + 20 > 100 )); then dir="/tmp/trackgo-pg-$(printf %s "$1" | sha256sum | cut -c1-12)"; fi
  echo "$dir"
}

ROOT_DIR="$(pg_root)"
DATA="$ROOT_DIR/data"
SOCK="$(sock_dir "$ROOT_DIR")"
PG_LOG="$ROOT_DIR/postgres.log"

url() { echo "postgresql+asyncpg://prefect@:$PG_PORT/prefect?host=$SOCK"; }

running() {
  local bin; bin="$(pg_bin)"
  [[ -s "$DATA/PG_VERSION" ]] && as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

up() {
  local bin; bin="$(pg_bin)"
  [[ $EUID -eq 0 ]] && { id "$PG_USER" >/dev/null 2>&1 || { log "no user '$PG_USER' to run PostgreSQL as (set TRACKGO_PG_USER)"; exit 1; }; }
  mkdir -p "$ROOT_DIR" "$SOCK"
  [[ $EUID -eq 0 ]] && chown "$PG_USER": "$ROOT_DIR" "$SOCK"
  chmod 700 "$ROOT_DIR" "$SOCK"
  if [[ ! -s "$DATA/PG_VERSION" ]]; then
    log "initdb $DATA ($("$bin/postgres" --version))"
    as_pg "$bin/initdb" -D "$DATA" -U prefect -A trust -E UTF8 --locale=C >"$ROOT_DIR/initdb.log" 2>&1 \
      || { log "initdb failed:"; tail -20 "$ROOT_DIR/initdb.log" >&2; exit 1; }
  fi
  if running; then
    log "already running ($DATA)"
  else
    log "starting PostgreSQL on socket $SOCK (log $PG_LOG)"
    as_pg "$bin/pg_ctl" -D "$DATA" -l "$PG_LOG" -w -t 120 -o "-h '' -k '$SOCK' -p $PG_PORT" start >/dev/null \
      || { log "PostgreSQL did not start:"; tail -20 "$PG_LOG" >&2; exit 1; }
  fi
  if [[ "$("$bin/psql" -h "$SOCK" -p "$PG_PORT" -U prefect -d postgres -tAc \
        "select 1 from pg_database where datname = 'prefect'")" != 1 ]]; then
    "$bin/createdb" -h "$SOCK" -p "$PG_PORT" -U prefect prefect
  fi
  url
}

down() {
  if running; then
    log "stopping PostgreSQL ($DATA)"
    as_pg "$(pg_bin)/pg_ctl" -D "$DATA" -m fast -w -t 120 stop >/dev/null
  fi
}

destroy() {
  down
  log "deleting $ROOT_DIR"
  rm -rf "$ROOT_DIR" "$SOCK"
}

status() {
  if running; then echo "postgres: running  data $DATA  socket $SOCK  log $PG_LOG"
  else echo "postgres: stopped  data $DATA"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  url) url ;;
  destroy) destroy ;;
  *) echo "usage: $0 up|down|status|url|destroy" >&2; exit 2 ;;
esac
