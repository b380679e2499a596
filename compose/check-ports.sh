#!/bin/bash
# Refuse to start the local stack when another program holds one of the host ports it publishes.
#
#   compose/check-ports.sh compose/.env
#
# compose would otherwise start half the stack and stop at the first taken port ("bind:
# address already in use"). The ports are those of the services the local stack starts
# (compose/docker-compose.yml: MinIO, Airflow's API server, MLflow, Prometheus, the
# Pushgateway), as compose/.env sets them. When containers of the project already run, the
# ports may be theirs (`up` leaves them as they are): nothing is checked.
# Exit 0: every port free (or the stack runs); 1: a port is taken, with what to do; 2: usage.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: compose/check-ports.sh ENV_FILE" >&2; exit 2; }
env_file=$1
[ -f "$env_file" ] || { echo "check-ports: $env_file not found: run \`sclake compose env\`" >&2; exit 1; }

# The last value of variable $1, empty when the file does not set it (grep finds nothing).
value() { { grep -E "^$1=" "$env_file" || true; } | tail -1 | cut -d= -f2-; }
project=$(value COMPOSE_PROJECT_NAME)
project=${project:-sclake}
if [ -n "$(docker ps -q --filter "label=com.docker.compose.project=$project")" ]; then
    exit 0
fi
address=$(value SCLAKE_BIND_ADDRESS)
address=${address:-127.0.0.1}
[ "$address" = 0.0.0.0 ] && address=127.0.0.1

taken=()
for spec in MINIO_API_PORT:9000 MINIO_CONSOLE_PORT:9001 AIRFLOW_PORT:8080 MLFLOW_PORT:5000 \
    PROMETHEUS_PORT:9090 PUSHGATEWAY_PORT:9091; do
    name=${spec%%:*}
    port=$(value "$name")
    port=${port:-${spec#*:}}
    # A connection that opens means something listens there.
    if (exec 3<>"/dev/tcp/$address/$port") 2>/dev/null; then
        taken+=("$port ($name)")
    fi
done
[ "${#taken[@]}" -eq 0 ] && exit 0

{
    echo "check-ports: refused: another program listens on $address at ${taken[*]}."
    echo "    See which with: ss -ltnp; an embedded stack (\`sclake demo\`, \`sclake stack up\`) holds"
    echo "    the same ports: stop it with \`sclake stack down\`. Or give the stack other ports in $env_file."
} >&2
exit 1
