# The CPU worker image: Python 3.11, the project's locked dependencies with the CPU build
# of torch, Helical and the sclake package. Runs the DockerOperator's steps on hosts
# without GPUs, the Dask scheduler and CPU workers, and the MLflow server; also runs
# `sclake run` on its own (docs/deployment.md, "Air-gapped builds").
#
# Nothing is downloaded while building: Python packages come from the wheelhouse image
# (`make wheelhouse`, docker/wheelhouse.Dockerfile), installed with --no-index. `make images`
# builds it from the repository root with the public base, or the local Debian base
# (tools/base-image.sh) where the public one cannot be pulled:
#   docker build --network none -f docker/worker-cpu.Dockerfile \
#       --build-arg PYTHON_IMAGE=sclake-base:bookworm -t sclake-worker:0.1.0-cpu .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG WHEELHOUSE_IMAGE=sclake-wheelhouse:0.1.0

FROM ${WHEELHOUSE_IMAGE} AS wheelhouse

# ---- builder: the venv, from the wheelhouse only
FROM ${PYTHON_IMAGE} AS builder
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
COPY --from=wheelhouse /wheels /wheels
# uv from its wheel (no pip, no network); the venv on the base's python3 (/usr/local/bin
# on python:*-slim, /usr/bin on Debian's), the same path in the runtime stage.
RUN python3 -m zipfile -e /wheels/uv-*.whl /tmp/uv \
    && install -m 0755 /tmp/uv/uv-*.data/scripts/uv /usr/local/bin/uv \
    && python3 -m venv --without-pip /opt/sclake/venv
COPY docker/requirements-worker-cpu.txt docker/overrides.txt /opt/sclake/docker/
# --python-version: the lock's pins were resolved for CPython 3.11.13 (docker/export_requirements.py);
# Debian's 3.11.2 runs them, but soupsieve declares Requires-Python >=3.11.5.
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels \
        --python-version 3.11.13 --override /opt/sclake/docker/overrides.txt -r /opt/sclake/docker/requirements-worker-cpu.txt
# The project itself, as a wheel built here (hatchling from the wheelhouse), not editable.
COPY pyproject.toml README.md /src/
COPY pipelines /src/pipelines
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels --no-deps /src

# ---- runtime: the venv, the project's data folders, tini; no compiler, no uv, no wheels
FROM ${PYTHON_IMAGE}
ARG SCLAKE_UID=1000
ENV VIRTUAL_ENV=/opt/sclake/venv \
    PATH=/opt/sclake/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    SCLAKE_SCHEMAS_DIR=/opt/sclake/schemas \
    SCLAKE_DAGS_FOLDER=/opt/sclake/dags \
    SCLAKE_HOME=/data/home \
    SCLAKE_MODELS_DIR=/models \
    CACHE_DIR_HELICAL_PREFIX=/models \
    HOME=/data/home \
    HF_HOME=/data/huggingface \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

COPY --from=wheelhouse /wheels/bin/tini /usr/local/bin/tini
COPY --from=builder /opt/sclake/venv /opt/sclake/venv
COPY schemas /opt/sclake/schemas
COPY dags /opt/sclake/dags
COPY docker/entrypoint.sh /usr/local/bin/sclake-entrypoint
COPY docker/dask-worker.sh /usr/local/bin/sclake-dask-worker
# /data and its home are writable by any uid (`docker run --user ...` or the compose volume).
RUN python -c "import pipelines.cli, helical, torch, distributed, mlflow" \
    && useradd --uid "${SCLAKE_UID}" --user-group --no-create-home --home-dir /data/home --shell /bin/bash sclake \
    && install -d -o "${SCLAKE_UID}" -g "${SCLAKE_UID}" /models /run/sclake-gpus \
    && install -d -m 1777 /data /data/home

USER ${SCLAKE_UID}
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/tini", "--", "/usr/local/bin/sclake-entrypoint"]
CMD ["sclake", "--help"]
