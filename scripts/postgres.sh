#!/usr/bin/env bash
# Start (idempotently) a private PostgreSQL 15 cluster for tests and benches, and print its URL.
#
#   scripts/postgres.sh [DIR]          start; DIR defaults to /var/lib/postgresql/gpuhub-test-PORT
#   scripts/postgres.sh stop [DIR]     stop it
#
# The cluster listens on 127.0.0.1:${GPUHUB_PG_PORT:-55432} only, trusts loopback (it is a throwaway
# test cluster, never a production database) and runs with fsync off, which is why it is fast.
# The data directory belongs to the `postgres` OS user because PostgreSQL refuses to run as root.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

action=start
if [ "${1:-}" = stop ] || [ "${1:-}" = start ]; then action=$1; shift; fi
PORT="${GPUHUB_PG_PORT:-55432}"
# The cluster lives where the postgres user can always reach it: a checkout under a private
# (mode 700) folder is not traversable by that user, so the default is outside the checkout.
DIR="${1:-${GPUHUB_PG_DIR:-/var/lib/postgresql/gpuhub-test-$PORT}}"
DB="${GPUHUB_PG_DB:-gpuhub_test}"
BIN=/usr/lib/postgresql/15/bin
URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"

as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@"; fi
}
ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres; }

if [ "$action" = stop ]; then
  [ -f "$DIR/data/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2 || true
  exit 0
fi

if ! ready; then
  [ -x "$BIN/initdb" ] || apt_need postgresql
  [ -x "$BIN/initdb" ] || die "PostgreSQL 15 binaries not found in $BIN after installing postgresql"
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    step "initialising a PostgreSQL test cluster in $DIR/data"
    rm -rf "$DIR/data"
    mkdir -p "$DIR/data" "$DIR/sock"
    as_root chown postgres:postgres "$DIR/data" "$DIR/sock"
    as_pg "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=trust \
      --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; die "initdb failed (log above, also $DIR/initdb.log)"; }
    cat >>"$DIR/data/postgresql.conf" <<EOF
# gpuhub test cluster: loopback only, durability traded for speed
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR/sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
EOF
  fi
  mkdir -p "$DIR/sock"
  as_root chown postgres:postgres "$DIR/sock"
  step "starting PostgreSQL on 127.0.0.1:$PORT"
  touch "$DIR/server.log" && as_root chown postgres:postgres "$DIR/server.log"
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >&2 \
    || { tail -n 30 "$DIR/server.log" >&2; die "PostgreSQL did not start (log above, also $DIR/server.log)"; }
  ready || die "PostgreSQL started but does not answer on 127.0.0.1:$PORT; see $DIR/server.log"
fi

psql=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  "${psql[@]}" -c "CREATE DATABASE \"$DB\"" >&2
fi
echo "$URL"
