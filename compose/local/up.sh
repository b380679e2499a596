#!/bin/bash
# Start the local stack (compose/docker-compose.yml + compose/docker-compose.local.yml) and
# wait until every service is healthy and every one-shot job has exited 0.
#
#   compose/local/up.sh          # (make compose-up-local) from the repository root
#
# Builds what is missing first: the project's images (`make images`, MAKE) and the stand-ins
# (compose/local/build.sh); writes compose/.env with generated secrets (or fills in what it
# lacks, keeping its values); refuses volumes made with another compose/.env
# (compose/check-volumes.sh) and host ports another program holds (compose/check-ports.sh).
# UP_TIMEOUT: seconds to wait for health (default 900).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
compose() { compose/local/compose.sh "$@"; }

started=$(date +%s)
missing=()
for image in "${SCLAKE_AIRFLOW_IMAGE:-sclake-airflow:0.1.0}" "${SCLAKE_WORKER_CPU_IMAGE:-sclake-worker:0.1.0-cpu}" \
    "${BASE_IMAGE:-sclake-base:bookworm}"; do
    docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "compose-up-local: building the project's images (missing: ${missing[*]})"
    ${MAKE:-make} images
fi
compose/local/build.sh

# Secrets kept, missing ones generated; volumes made with another compose/.env refused.
new=
[ -f compose/.env ] || new=--new
python3 -m pipelines.envgen
# shellcheck disable=SC2086 # empty or one flag
compose/check-volumes.sh compose/.env $new
compose/check-ports.sh compose/.env

echo "compose-up-local: not started here: grafana, cadvisor (no Debian or PyPI package; dashboards are"
echo "    checked against this stack's Prometheus) and statsd-exporter (Airflow's metrics come from"
echo "    airflow-exporter); see docs/deployment.md, \"The local stack (no registry)\""
up_start=$(date +%s)
compose up -d --remove-orphans

# Every container of the project: long-running ones healthy, one-shot jobs exited 0.
deadline=$((up_start + ${UP_TIMEOUT:-900}))
while true; do
    ids=$(compose ps -q)
    [ -n "$ids" ] || { echo "compose-up-local: no container was started" >&2; exit 1; }
    # shellcheck disable=SC2086 # container ids, one per word
    states=$(docker inspect --format \
        '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}} {{or .HostConfig.RestartPolicy.Name "no"}}' \
        $ids)
    waiting=()
    failed=()
    while read -r name status health exit_code restart; do
        name=${name#/}
        if [ "$restart" = no ]; then
            case "$status" in
                exited) [ "$exit_code" = 0 ] || failed+=("$name (exit $exit_code)") ;;
                *) waiting+=("$name ($status)") ;;
            esac
        elif [ "$status" != running ]; then
            failed+=("$name ($status, exit $exit_code)")
        elif [ "$health" != healthy ]; then
            waiting+=("$name ($health)")
        fi
    done <<<"$states"
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "compose-up-local: failed: ${failed[*]}" >&2
        echo "    logs: compose/local/compose.sh logs SERVICE" >&2
        exit 1
    fi
    [ "${#waiting[@]}" -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "compose-up-local: still not healthy after ${UP_TIMEOUT:-900}s: ${waiting[*]}" >&2
        exit 1
    fi
    sleep 3
done

now=$(date +%s)
compose ps
echo "compose-up-local: every service healthy $((now - up_start))s after \`up\` ($((now - started))s in all)"
port() { grep -E "^$1=" compose/.env | tail -1 | cut -d= -f2; }
echo "    Airflow     http://localhost:$(port AIRFLOW_PORT)  (user $(port AIRFLOW_ADMIN_USER), password in compose/.env)"
echo "    S3 (lake)   http://localhost:$(port MINIO_API_PORT)   MLflow http://localhost:$(port MLFLOW_PORT)"
echo "    Prometheus  http://localhost:$(port PROMETHEUS_PORT)   Pushgateway http://localhost:$(port PUSHGATEWAY_PORT)"
