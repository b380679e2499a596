#!/usr/bin/env bash
# Build the sclake images without network inside any build step (`make images`;
# docs/deployment.md, "Air-gapped builds"):
#
#   sclake-worker:<version>-cpu    docker/worker-cpu.Dockerfile  base PYTHON_IMAGE
#   sclake-airflow:<version>       docker/airflow.Dockerfile     base AIRFLOW_IMAGE
#   sclake-worker:<version>-cuda   docker/worker.Dockerfile      base CUDA_IMAGE
#
# Each public base is used when it is on this host or can be pulled; otherwise the CPU
# images are built on the local Debian base (tools/base-image.sh, BASE_IMAGE) and the CUDA
# image is skipped (it needs the CUDA base). Python packages come from the wheelhouse
# (tools/wheelhouse.py), put into an image of its own (docker/wheelhouse.Dockerfile) that
# the builds copy from; every `docker build` runs with --network none.
#
# Settings (environment): IMAGE_VERSION, WHEELHOUSE (build/wheelhouse), PYTHON_IMAGE,
# AIRFLOW_IMAGE, CUDA_IMAGE, BASE_IMAGE, CUDA (auto | yes | no), PULL (1: try `docker pull`
# for a missing public base, 0: never), IMAGES (which ones: "worker-cpu airflow cuda"),
# PYTHON (the host Python that runs tools/wheelhouse.py), NO_CACHE (1: build without
# Docker's layer cache), IMAGES_STATUS (a file that gets a line per image built).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${IMAGE_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}"
wheelhouse="${WHEELHOUSE:-build/wheelhouse}"
python_image="${PYTHON_IMAGE:-python:3.11.13-slim-bookworm}"
airflow_image="${AIRFLOW_IMAGE:-apache/airflow:slim-3.3.2-python3.11}"
cuda_image="${CUDA_IMAGE:-nvidia/cuda:13.0.2-base-ubuntu24.04}"
base_image="${BASE_IMAGE:-sclake-base:bookworm}"
images="${IMAGES:-worker-cpu airflow cuda}"
python="${PYTHON:-.venv/bin/python}"
label="org.sclake.wheelhouse"

say() { echo "images: $*"; }

# A public base when it is here or can be pulled (PULL=0: only when it is here).
available() {
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    [[ "${PULL:-1}" == 1 ]] || return 1
    timeout 600 docker pull "$1" >/dev/null 2>&1
}

base_for() {  # public image -> the base to build on
    if available "$1"; then
        echo "$1"
    else
        tools/base-image.sh "${base_image}" >&2
        echo "${base_image}"
    fi
}

image_id() { docker image inspect --format '{{ .Id }}' "$1" 2>/dev/null || true; }

# A rebuilt tag leaves the image it named before without a name; remove it unless something
# still uses it (another tag, a container), so that rebuilds do not fill the disk.
drop_previous() {  # previous-id tag
    [[ -n "$1" && "$1" != "$(image_id "$2")" ]] || return 0
    [[ "$(docker image inspect --format '{{ len .RepoTags }}' "$1" 2>/dev/null)" == 0 ]] || return 0
    if docker image rm "$1" >/dev/null 2>&1; then say "removed the previous $2 (${1:7:12})"; fi
}

# The wheelhouse image of a folder, rebuilt only when the folder's files changed.
wheelhouse_image() {  # folder tag
    local sums current previous
    sums="$(sha256sum "$1/MANIFEST" | cut -c1-16)"
    current="$(docker image inspect --format "{{ index .Config.Labels \"${label}\" }}" "$2" 2>/dev/null || true)"
    if [[ "${current}" != "${sums}" ]]; then
        say "wheelhouse image $2 from $1 ($(du -sh "$1" | cut -f1))"
        previous="$(image_id "$2")"
        docker build --quiet --network none ${NO_CACHE:+--no-cache} --label "${label}=${sums}" -f docker/wheelhouse.Dockerfile -t "$2" "$1" >/dev/null
        drop_previous "${previous}" "$2"
    fi
}

build() {  # dockerfile tag build-arg... (the first one names the base)
    local dockerfile="$1" tag="$2" start=${SECONDS} cache=() previous
    shift 2
    [[ -z "${NO_CACHE:-}" ]] || cache=(--no-cache)
    say "building ${tag} (${dockerfile}; $*)"
    previous="$(image_id "${tag}")"
    docker build --network none "${cache[@]}" -f "${dockerfile}" "${@/#/--build-arg=}" -t "${tag}" . \
        >"build/images-${tag//[:\/]/_}.log" 2>&1 \
        || { tail -n 40 "build/images-${tag//[:\/]/_}.log" >&2; say "building ${tag} failed"; exit 1; }
    say "built ${tag} in $((SECONDS - start)) s, $(docker image inspect --format '{{ .Size }}' "${tag}" | numfmt --to=iec)"
    drop_previous "${previous}" "${tag}"
    if [[ -n "${IMAGES_STATUS:-}" ]]; then
        echo "${tag} built $(date -u +%H:%M) (base ${1#*=})" >>"${IMAGES_STATUS}"
    fi
}

mkdir -p build
wheelhouse_image "${wheelhouse}" "sclake-wheelhouse:${version}"

for image in ${images}; do
    case "${image}" in
        worker-cpu)
            base="$(base_for "${python_image}")"
            [[ "${base}" == "${python_image}" ]] || say "${python_image} is not here and cannot be pulled: the CPU worker uses ${base}"
            build docker/worker-cpu.Dockerfile "sclake-worker:${version}-cpu" \
                "PYTHON_IMAGE=${base}" "WHEELHOUSE_IMAGE=sclake-wheelhouse:${version}"
            ;;
        airflow)
            base="$(base_for "${airflow_image}")"
            [[ "${base}" == "${airflow_image}" ]] || say "${airflow_image} is not here and cannot be pulled: Airflow uses ${base}"
            build docker/airflow.Dockerfile "sclake-airflow:${version}" \
                "AIRFLOW_IMAGE=${base}" "WHEELHOUSE_IMAGE=sclake-wheelhouse:${version}"
            ;;
        cuda)
            if [[ "${CUDA:-auto}" == no ]]; then
                say "sclake-worker:${version}-cuda skipped (CUDA=no)"
            elif available "${cuda_image}"; then
                "${python}" tools/wheelhouse.py "${wheelhouse}-cuda" --python 3.11.13 \
                    --requirements docker/requirements-build.txt --requirements docker/requirements-worker-gpu.txt
                wheelhouse_image "${wheelhouse}-cuda" "sclake-wheelhouse:${version}-cuda"
                build docker/worker.Dockerfile "sclake-worker:${version}-cuda" \
                    "CUDA_IMAGE=${cuda_image}" "WHEELHOUSE_IMAGE=sclake-wheelhouse:${version}-cuda"
            elif [[ "${CUDA:-auto}" == yes ]]; then
                say "CUDA=yes but ${cuda_image} is not here and cannot be pulled"
                exit 1
            else
                say "sclake-worker:${version}-cuda skipped: its base ${cuda_image} is not here and cannot be pulled" \
                    "(docker load it, or set CUDA_IMAGE to a CUDA base this host has)"
            fi
            ;;
        *)
            say "unknown image ${image@Q} in IMAGES (worker-cpu, airflow, cuda)"
            exit 2
            ;;
    esac
done
