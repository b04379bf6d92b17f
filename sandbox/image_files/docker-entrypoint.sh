#!/bin/sh
# Starts PostgreSQL the way the official postgres image does, for the parts dbproxy uses:
# POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres), POSTGRES_DB (default the
# user's name), and on the first start the scripts in /docker-entrypoint-initdb.d (*.sh run, or
# sourced when not executable; *.sql fed to psql). Arguments starting with "-" go to postgres;
# `postgres --version` (or --help, -C) runs without initializing anything.
# Local (Unix socket) connections inside the container are trusted; TCP needs SCRAM passwords.
set -eu

if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi

want_help=
for arg in "$@"; do
    case "$arg" in -V|--version|-'?'|--help|--describe-config|-C) want_help=1 ;; esac
done

if [ "$1" = postgres ] && [ -z "$want_help" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    POSTGRES_USER="${POSTGRES_USER:-postgres}"
    POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    export POSTGRES_USER POSTGRES_DB
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
unix_socket_directories = '/var/run/postgresql'
CONF
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    export PGHOST=/var/run/postgresql PGUSER="$POSTGRES_USER"
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                echo "docker-entrypoint.sh: running $f"
                if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql)
                echo "docker-entrypoint.sh: running $f"
                psql -X -q -v ON_ERROR_STOP=1 -d "$POSTGRES_DB" -f "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGHOST PGUSER
    echo "docker-entrypoint.sh: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
