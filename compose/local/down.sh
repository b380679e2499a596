#!/bin/bash
# Stop the local stack and leave no container behind: the compose services, one-off
# containers of `run`, and the step containers Airflow's DockerOperator started (label
# io.sclake.step), also those of failed steps.
#
#   compose/local/down.sh            # (make compose-down-local) volumes are kept
#   VOLUMES=1 compose/local/down.sh  # (make compose-down-local VOLUMES=1) volumes removed too:
#                                    # the lake, the databases, the model cache
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
compose() { compose/local/compose.sh "$@"; }

project=$(grep -E '^COMPOSE_PROJECT_NAME=' compose/.env 2>/dev/null | tail -1 | cut -d= -f2)
project=${project:-sclake}
# No new step containers while the others are removed.
compose stop airflow-worker airflow-scheduler >/dev/null 2>&1 || true
steps=$(docker ps -aq --filter label=io.sclake.step)
if [ -n "$steps" ]; then
    echo "compose-down-local: removing $(wc -w <<<"$steps") step container(s)"
    # shellcheck disable=SC2086
    docker rm -f $steps >/dev/null
fi
args=(down --remove-orphans)
[ "${VOLUMES:-0}" = 1 ] && args+=(--volumes)
# Every profile, so that containers of optional services go too.
COMPOSE_PROFILES=gpu,dask-gpu,flower,models,upstream compose "${args[@]}"

left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker ps -aq --filter label=io.sclake.step)
if [ -n "$left" ]; then
    echo "compose-down-local: removing containers left behind: $(tr '\n' ' ' <<<"$left")" >&2
    # shellcheck disable=SC2086
    docker rm -f $left >/dev/null
fi
echo "compose-down-local: no container of the stack is left$([ "${VOLUMES:-0}" = 1 ] && echo ", volumes removed" || echo " (volumes kept; VOLUMES=1 removes them)")"
