#!/bin/sh
# The official image's start-up, as far as docker-compose.yml uses it: on an empty $PGDATA create the
# cluster with $POSTGRES_USER as superuser (password from $POSTGRES_PASSWORD or $POSTGRES_PASSWORD_FILE)
# and the database $POSTGRES_DB; then run the server as the postgres user, listening on all addresses.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    # read as root (a secret file is often root's, mode 0600), handed on in the environment
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")" || { echo "cannot read POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE" >&2; exit 1; }
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
  fi
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-postgres}" != postgres ]; then exec "$@"; fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE: the database refuses password-less logins from the network" >&2; exit 1; }
  user="${POSTGRES_USER:-postgres}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$user" -d postgres -q -c "CREATE DATABASE \"$db\""
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
fi
unset POSTGRES_PASSWORD
shift || true
exec postgres -D "$PGDATA" "$@"
