#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1:55432 (database "dse", user "dse", trust auth on loopback).
# Installs Debian's postgresql when missing. initdb refuses root, so the cluster runs as the postgres user.
set -euo pipefail
PGPORT="${DSE_PG_PORT:-55432}"
PGDATA="${DSE_PG_DATA:-/tmp/dse-pg-$PGPORT}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "postgresql is not installed and we are not root" >&2; exit 1
  fi
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
write_env() {  # what the tests need: the URL, and the commands that restart, stop and start this server (outages)
  {
    echo "export DSE_TEST_PG_URL=postgresql+psycopg://dse@127.0.0.1:$PGPORT/dse"
    for verb in restart stop start; do
      var="DSE_TEST_PG_$(echo "$verb" | tr a-z A-Z)"
      cmd="$BIN/pg_ctl -D $PGDATA -w -m fast $verb"
      [ "$verb" = start ] && cmd="$BIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -o '-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200' start"
      if [ "$(id -u)" = 0 ]; then
        echo "export $var=\"su postgres -s /bin/bash -c \\\"$cmd >/dev/null\\\"\""
      else
        echo "export $var=\"$cmd >/dev/null\""
      fi
    done
  } > "${DSE_PG_ENV:-/tmp/dse-pg.env}"
}
if as_pg "$BIN/pg_ctl -D $PGDATA status" >/dev/null 2>&1; then
  echo "PostgreSQL already running on $PGPORT"; write_env; exit 0
fi
rm -rf "$PGDATA"; mkdir -p "$PGDATA"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
as_pg "$BIN/initdb -D $PGDATA -A trust -U postgres >/dev/null"
as_pg "$BIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -o '-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200' start >/dev/null"
as_pg "$BIN/psql -h 127.0.0.1 -p $PGPORT -U postgres -c \"CREATE ROLE dse LOGIN SUPERUSER\" >/dev/null"
as_pg "$BIN/psql -h 127.0.0.1 -p $PGPORT -U postgres -c \"CREATE DATABASE dse OWNER dse\" >/dev/null"
write_env
echo "PostgreSQL started on 127.0.0.1:$PGPORT (data $PGDATA)"
