# syntax=docker/dockerfile:1
# The GPU worker image: CUDA base, Python 3.11, the project's locked dependencies with the
# CUDA build of torch (same version as the lock), Helical and the sclake package. Airflow's
# DockerOperator runs `sclake step ...` in it; the GPU Dask workers run `sclake-dask-worker`.
#
# torch's PyPI wheels bundle the CUDA runtime (the nvidia-* wheels in the requirements), so
# the base only needs the driver libraries that the NVIDIA container toolkit mounts. CUDA 13
# wheels need an NVIDIA driver >= 580 on the host.
#
# Build from the repository root (compose does this):
#   docker build -f docker/worker.Dockerfile -t sclake-worker:0.1.0-cuda .
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION=3.11.13
ARG SCLAKE_UID=1000
ENV DEBIAN_FRONTEND=noninteractive \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
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
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
# Python from uv's standalone builds, the same minor version as uv.lock's.
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/sclake/venv

COPY docker/requirements-worker-gpu.txt docker/overrides.txt /opt/sclake/docker/
RUN uv pip install --override /opt/sclake/docker/overrides.txt -r /opt/sclake/docker/requirements-worker-gpu.txt

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
