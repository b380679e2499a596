# shellcheck shell=bash
# Sourced by the local stack's scripts: `compose ARGS...` runs docker-compose (or `docker
# compose`) on the production file plus the local override, with compose/.env.
# COMPOSE overrides the command.
compose() {
    local env_file=compose/.env
    [ -f "$env_file" ] || env_file=.env.example
    # shellcheck disable=SC2086 # COMPOSE may be two words (docker compose)
    ${COMPOSE:-docker-compose} -f compose/docker-compose.yml -f compose/docker-compose.local.yml \
        --env-file "$env_file" "$@"
}
