#!/usr/bin/env bash
# Build the local Debian base image of the sclake images with debootstrap, for hosts that
# cannot pull python:*-slim, apache/airflow or nvidia/cuda (air-gapped builds,
# docs/deployment.md). Debian bookworm minbase with Debian's Python 3.11 (python3,
# python3-venv), tini and ca-certificates; apt's lists and caches removed.
#
#   tools/base-image.sh [TAG]        # default sclake-base:bookworm
#
# The image carries the hash of this recipe as the label org.sclake.base-recipe; when an
# image of that tag already has the current hash, nothing is rebuilt (FORCE=1 rebuilds).
# Needs root (debootstrap), a Debian mirror ($DEBIAN_MIRROR) and a Docker engine; writes
# nothing outside a temporary folder.
set -euo pipefail

tag="${1:-sclake-base:bookworm}"
suite="bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages="python3,python3-venv,tini,ca-certificates"
label="org.sclake.base-recipe"

# What the image is made of: this script (its packages, suite and settings are in it).
recipe="$(sha256sum "$0" | cut -c1-16)"
current="$(docker image inspect --format "{{ index .Config.Labels \"${label}\" }}" "${tag}" 2>/dev/null || true)"
if [[ "${current}" == "${recipe}" && -z "${FORCE:-}" ]]; then
    echo "${tag} is up to date (recipe ${recipe})"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "tools/base-image.sh needs root (debootstrap); run it with sudo" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/sclake-base.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
root="${work}/rootfs"
echo "debootstrap ${suite} (minbase + ${packages}) from ${mirror}"
debootstrap --variant=minbase --include="${packages}" "${suite}" "${root}" "${mirror}" >"${work}/debootstrap.log" 2>&1 \
    || { tail -n 30 "${work}/debootstrap.log" >&2; exit 1; }

# The image's apt sources (for whoever extends it with network) and no caches or logs.
cat >"${root}/etc/apt/sources.list" <<SOURCES
deb ${mirror} ${suite} main
deb ${mirror} ${suite}-updates main
deb http://deb.debian.org/debian-security ${suite}-security main
SOURCES
rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/* "${root}"/var/cache/debconf/*-old \
    "${root}"/var/log/* "${root}"/tmp/* "${root}"/root/.cache
# dpkg excludes for docs would need a re-install; removing them now only shrinks the image.
rm -rf "${root}"/usr/share/doc/* "${root}"/usr/share/man/* "${root}"/usr/share/info/* "${root}"/usr/share/locale/*
mkdir -p "${root}/tmp" && chmod 1777 "${root}/tmp"

tar --numeric-owner -C "${root}" -c . | docker import \
    --change "LABEL ${label}=${recipe}" \
    --change "LABEL org.opencontainers.image.description=\"Debian ${suite} minbase with Python 3.11 (sclake base)\"" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" \
    --change 'CMD ["/bin/bash"]' \
    - "${tag}" >/dev/null
echo "built ${tag} (recipe ${recipe}): $(docker image inspect --format '{{ .Size }}' "${tag}" | numfmt --to=iec)"
