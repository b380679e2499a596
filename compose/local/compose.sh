#!/bin/bash
# docker-compose on the production file plus the local override, with compose/.env
# (.env.example when there is none), from any folder:
#   compose/local/compose.sh ps | logs SERVICE | exec SERVICE CMD | ...
# COMPOSE overrides the command (e.g. COMPOSE="docker compose").
set -euo pipefail

cd "$(dirname "$0")/../.."
env_file=compose/.env
[ -f "$env_file" ] || env_file=.env.example
# shellcheck disable=SC2086 # COMPOSE may be two words (docker compose)
exec ${COMPOSE:-docker-compose} -f compose/docker-compose.yml -f compose/docker-compose.local.yml \
    --env-file "$env_file" "$@"
