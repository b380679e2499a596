#!/bin/bash
# Entry point of the Postgres stand-in (Debian's postgresql-15), with what sclake uses of the
# official image's: on an empty data volume, initdb with POSTGRES_USER / POSTGRES_PASSWORD,
# then the scripts in /docker-entrypoint-initdb.d/ against a server listening on the socket
# only; then the server on every interface, password (SCRAM) login from the network.
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
data=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"

if [ ! -s "$data/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
    "$bin/initdb" -D "$data" -U "$user" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    "$bin/pg_ctl" -D "$data" -w -o "-c listen_addresses=''" start
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) echo "postgres-init: running $script"; bash "$script" ;;
            *.sql) echo "postgres-init: running $script"; psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -f "$script" ;;
            *) ;;
        esac
    done
    "$bin/pg_ctl" -D "$data" -w -m fast stop
    echo "postgres-init: database cluster ready"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*'
