#!/usr/bin/env bash
# The README's set-up on a machine without a local torch wheel folder: a fresh clone of HEAD,
# `make setup` in a mount namespace where an empty folder hides TORCH_WHEELS (/opt/wheels), so
# only the lock's own sources (PyPI) can be used. Then the environment must import and run.
#   tools/check-fresh-install.sh        (root: it needs `unshare --mount`)
# Prints what the default install put in place (torch build, environment size, time).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wheels="${TORCH_WHEELS:-/opt/wheels}"
work="$(mktemp -d /tmp/sclake-fresh.XXXXXX)"
trap 'rm -rf "${work}"' EXIT
git clone --quiet "${root}" "${work}/src"
mkdir -p "${work}/empty"
start=${SECONDS}
# shellcheck disable=SC2016  # expanded by the inner shell
unshare --mount bash -euo pipefail -c '
    wheels="$1"; work="$2"
    if [[ -d "${wheels}" ]]; then mount --bind "${work}/empty" "${wheels}"; fi
    if compgen -G "${wheels}/*.whl" >/dev/null; then echo "${wheels} is not hidden" >&2; exit 1; fi
    cd "${work}/src"
    make setup >"${work}/setup.log" 2>&1 || { tail -30 "${work}/setup.log" >&2; exit 1; }
    .venv/bin/python -c "import torch, helical, pipelines.cli; print(\"torch\", torch.__version__)"
    .venv/bin/sclake --help >/dev/null
' _ "${wheels}" "${work}"
echo "fresh install without ${wheels}: ok in $((SECONDS - start)) s; environment $(du -sh "${work}/src/.venv" | cut -f1)"
