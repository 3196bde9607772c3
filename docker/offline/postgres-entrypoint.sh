#!/bin/sh
# Entrypoint of the offline Postgres image (docker/offline/postgres.Dockerfile): the part of upstream's
# docker-entrypoint.sh that docker-compose.yml relies on. First start: initdb in PGDATA with POSTGRES_USER as
# the superuser (password POSTGRES_PASSWORD, scram-sha-256 for connections from other containers, trust on
# the local socket), then CREATE DATABASE POSTGRES_DB. Every start: `postgres` as the postgres user, listening
# on all addresses. Other commands (`docker run IMAGE psql ...`) run as given.
set -eu

if [ "${1:-postgres}" != "postgres" ]; then
    exec "$@"
fi
shift || true

PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres: set POSTGRES_PASSWORD (the superuser's password for connections from other containers)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-instructions -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    if [ "$db" != "postgres" ]; then
        # single-user mode: no server to start and stop, nothing listening before the database exists
        printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$db" "$user" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "postgres: initialised $PGDATA (user $user, database $db)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
