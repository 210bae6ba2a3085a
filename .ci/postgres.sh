#!/usr/bin/env bash
# Start two throwaway PostgreSQL clusters on loopback (database "dse", user "dse", trust auth):
# - the shared one on 127.0.0.1:55432 (DSE_TEST_PG_URL), used by every postgres test;
# - the outage one on 127.0.0.1:55433 (DSE_TEST_PG_OUTAGE_URL with DSE_TEST_PG_RESTART/STOP/START), used only by
#   the tests that take their server down, so an outage never reaches a test running beside them.
# Installs Debian's postgresql when missing. initdb refuses root, so the clusters run as the postgres user.
set -euo pipefail
PORT="${DSE_PG_PORT:-55432}"  # the shared cluster's port; the outage cluster takes the next one
ENV_FILE="${DSE_PG_ENV:-/tmp/dse-pg.env}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "postgresql is not installed and we are not root" >&2; exit 1
  fi
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
start_cmd() {  # port data: pg_ctl start for one cluster
  echo "$BIN/pg_ctl -D $2 -l $2/server.log -w -o '-p $1 -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200' start"
}
cluster() {  # port: a running cluster with role and database dse
  local port="$1" data="/tmp/dse-pg-$1"
  if as_pg "$BIN/pg_ctl -D $data status" >/dev/null 2>&1; then
    echo "PostgreSQL already running on $port"; return
  fi
  rm -rf "$data"; mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
  as_pg "$BIN/initdb -D $data -A trust -U postgres >/dev/null"
  as_pg "$(start_cmd "$port" "$data") >/dev/null"
  as_pg "$BIN/psql -h 127.0.0.1 -p $port -U postgres -c \"CREATE ROLE dse LOGIN SUPERUSER\" >/dev/null"
  as_pg "$BIN/psql -h 127.0.0.1 -p $port -U postgres -c \"CREATE DATABASE dse OWNER dse\" >/dev/null"
  echo "PostgreSQL started on 127.0.0.1:$port (data $data)"
}
outage_var() {  # verb: the export line of the shell command that restarts/stops/starts the outage cluster
  local port="$1" verb="$2" data="/tmp/dse-pg-$1" cmd
  cmd="$BIN/pg_ctl -D $data -w -m fast $verb"
  [ "$verb" = start ] && cmd="$(start_cmd "$port" "$data")"
  local var="DSE_TEST_PG_$(echo "$verb" | tr a-z A-Z)"
  if [ "$(id -u)" = 0 ]; then
    echo "export $var=\"su postgres -s /bin/bash -c \\\"$cmd >/dev/null\\\"\""
  else
    echo "export $var=\"$cmd >/dev/null\""
  fi
}
OUTAGE=$((PORT + 1))
cluster "$PORT"
cluster "$OUTAGE"
{
  echo "export DSE_TEST_PG_URL=postgresql+psycopg://dse@127.0.0.1:$PORT/dse"
  echo "export DSE_TEST_PG_OUTAGE_URL=postgresql+psycopg://dse@127.0.0.1:$OUTAGE/dse"
  for verb in restart stop start; do outage_var "$OUTAGE" "$verb"; done
} > "$ENV_FILE"
