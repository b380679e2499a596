#!/usr/bin/env bash
# Install the CPU build of the torch version uv.lock pins into the environment of PYTHON,
# without dependencies (`uv sync` installed them from the lock). --no-config: the project's
# override (torch==VERSION) would otherwise make uv take the PyPI build.
#   tools/install-torch-cpu.sh .venv/bin/python
# The wheel comes from $TORCH_WHEELS when a CPU wheel of that version lies there, else from
# $TORCH_INDEX_URL (PyTorch's CPU index by default, or a mirror of it).
set -euo pipefail
python="${1:?usage: install-torch-cpu.sh PYTHON}"
here="$(cd "$(dirname "$0")" && pwd)"
uv="${UV:-uv}"
version="$(python3 "${here}/torch_build.py" version)"
installed="$("${python}" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "${installed}" == "${version}+cpu" ]]; then
    echo "torch ${installed} (CPU build) is installed"
    exit 0
fi
shopt -s nullglob
wheels=("${TORCH_WHEELS:-/opt/wheels}"/torch-"${version}"+cpu-*.whl)
if ((${#wheels[@]})); then
    ${uv} pip install --no-config --python "${python}" --no-deps --compile-bytecode --reinstall-package torch "${wheels[0]}"
else
    ${uv} pip install --no-config --python "${python}" --no-deps --compile-bytecode --reinstall-package torch \
        --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "torch==${version}+cpu"
fi
