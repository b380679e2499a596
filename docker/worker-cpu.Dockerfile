# syntax=docker/dockerfile:1
# The CPU worker image: Python 3.11, the project's locked dependencies with the CPU build
# of torch, Helical and the sclake package. Runs the DockerOperator's steps on hosts
# without GPUs, the Dask scheduler and CPU workers, and the MLflow server.
#
# Build from the repository root (compose does this):
#   docker build -f docker/worker-cpu.Dockerfile -t sclake-worker:0.1.0-cpu .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE}
# torch's CPU build (the version uv.lock pins) comes from the PyTorch index; everything else from PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG SCLAKE_UID=1000
ENV DEBIAN_FRONTEND=noninteractive \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/sclake/venv \
    PATH=/opt/sclake/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SCLAKE_SCHEMAS_DIR=/opt/sclake/schemas \
    SCLAKE_HOME=/data/home \
    SCLAKE_MODELS_DIR=/models \
    CACHE_DIR_HELICAL_PREFIX=/models \
    HF_HOME=/data/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
RUN uv venv --python /usr/local/bin/python3 /opt/sclake/venv

COPY docker/requirements-worker-cpu.txt docker/overrides.txt /opt/sclake/docker/
RUN uv pip install --no-deps --index-url "${TORCH_INDEX_URL}" \
        "$(grep -E '^torch==' /opt/sclake/docker/requirements-worker-cpu.txt)" \
    && uv pip install --override /opt/sclake/docker/overrides.txt -r /opt/sclake/docker/requirements-worker-cpu.txt

COPY . /opt/sclake
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sclake-entrypoint
COPY --chmod=0755 docker/dask-worker.sh /usr/local/bin/sclake-dask-worker
RUN uv pip install --no-deps --editable /opt/sclake \
    && python -c "import pipelines.cli, helical, torch, distributed, mlflow" \
    && useradd --uid "${SCLAKE_UID}" --user-group --create-home --shell /bin/bash sclake \
    && install -d -o "${SCLAKE_UID}" -g "${SCLAKE_UID}" /models /data /data/home /run/sclake-gpus

USER ${SCLAKE_UID}
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sclake-entrypoint"]
CMD ["sclake", "--help"]
