#!/usr/bin/env bash
# Start the Docker engine when none answers, and wait until it does.
#   tools/dockerd-up.sh          # uses DOCKER_DATA_ROOT (default /var/lib/docker: the layer cache stays)
# Root only (dockerd). Its log goes to $DOCKERD_LOG (default /var/log/sclake-dockerd.log).
# The engine is left running: later builds and tests reuse it and its cache.
set -euo pipefail
if docker info >/dev/null 2>&1; then
    exit 0
fi
command -v dockerd >/dev/null || { echo "dockerd is not installed (Debian: apt-get install docker.io)" >&2; exit 1; }
log="${DOCKERD_LOG:-/var/log/sclake-dockerd.log}"
setsid dockerd --data-root "${DOCKER_DATA_ROOT:-/var/lib/docker}" >>"${log}" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "dockerd answers (log: ${log})"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within 60 s; see ${log}" >&2
exit 1
