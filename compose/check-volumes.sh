#!/bin/bash
# Refuse to start the compose stack on volumes made with other secrets than ENV_FILE's.
#
#   compose/check-volumes.sh compose/.env [--new]
#
# Postgres keeps the passwords it was first started with, MinIO its root key: a stack
# started over them with another compose/.env (a fresh clone's, `sclake compose env
# --force`, another checkout's) fails to log in ("password authentication failed for user
# airflow"). compose/docker-compose.yml labels those volumes with io.sclake.stack-id, the
# env file's SCLAKE_STACK_ID. A volume labelled otherwise is refused; one without the label
# (made before the label existed) is refused only when the env file is new (--new: it was
# just written, so it cannot hold the secrets the volume was made with).
# Exit 0: nothing to refuse; 1: refused, with what to do; 2: usage.
set -euo pipefail

usage() { echo "usage: compose/check-volumes.sh ENV_FILE [--new]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
env_file=$1
new=0
if [ $# -eq 2 ]; then
    [ "$2" = --new ] || usage
    new=1
fi
[ -f "$env_file" ] || { echo "check-volumes: $env_file not found: run \`sclake compose env\`" >&2; exit 1; }

# The last value of variable $1, empty when the file does not set it (grep finds nothing).
value() { { grep -E "^$1=" "$env_file" || true; } | tail -1 | cut -d= -f2-; }
project=$(value COMPOSE_PROJECT_NAME)
project=${project:-sclake}
stack_id=$(value SCLAKE_STACK_ID)
[ -n "$stack_id" ] && [ "$stack_id" != change-me ] ||
    { echo "check-volumes: $env_file has no SCLAKE_STACK_ID: run \`sclake compose env\`" >&2; exit 1; }

foreign=()
for name in minio-data postgres-data; do
    volume="${project}_${name}"
    label=$(docker volume inspect --format '{{index .Labels "io.sclake.stack-id"}}' "$volume" 2>/dev/null) || continue
    case "$label" in
        "$stack_id") ;;
        "" | "<no value>") [ "$new" = 1 ] && foreign+=("$volume (made before volumes were labelled)") ;;
        *) foreign+=("$volume (stack $label)") ;;
    esac
done
[ "${#foreign[@]}" -eq 0 ] && exit 0

{
    echo "check-volumes: refused: ${foreign[*]}: made with the secrets of another env file than"
    echo "    $env_file (stack $stack_id); Postgres and MinIO would refuse its passwords."
    echo "    Either put back the compose/.env they were made with, or remove them (their data is lost):"
    echo "    make compose-down-local VOLUMES=1   (the local stack), or: docker volume rm ${foreign[*]%% *}"
} >&2
exit 1
