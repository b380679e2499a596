# The GPU worker image: CUDA base, Python 3.11, the project's locked dependencies with the
# CUDA build of torch (the lock's), Helical and the sclake package. Airflow's DockerOperator
# runs `sclake step ...` in it; the GPU Dask workers run `sclake-dask-worker`.
#
# torch's PyPI wheels bundle the CUDA runtime (the nvidia-* wheels in the requirements), so
# the base only needs the driver libraries that the NVIDIA container toolkit mounts. CUDA 13
# wheels need an NVIDIA driver >= 580 on the host.
#
# Nothing is downloaded while building: the CUDA wheelhouse image (`make images` makes it
# when the CUDA base is here or can be pulled) holds the wheels and a relocatable CPython
# 3.11 (the CUDA base has none) under /wheels/python:
#   docker build --network none -f docker/worker.Dockerfile \
#       --build-arg WHEELHOUSE_IMAGE=sclake-wheelhouse:0.1.0-cuda -t sclake-worker:0.1.0-cuda .
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG WHEELHOUSE_IMAGE=sclake-wheelhouse:0.1.0-cuda

FROM ${WHEELHOUSE_IMAGE} AS wheelhouse

# ---- builder: Python and the venv, from the wheelhouse only
FROM ${CUDA_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
COPY --from=wheelhouse /wheels /wheels
RUN mkdir -p /opt/python \
    && cp -a /wheels/python/cpython-3.11.* /opt/python/ \
    && ln -s /opt/python/cpython-3.11.*/bin/python3.11 /usr/local/bin/python3 \
    && python3 -m zipfile -e /wheels/uv-*.whl /tmp/uv \
    && install -m 0755 /tmp/uv/uv-*.data/scripts/uv /usr/local/bin/uv \
    && python3 -m venv --without-pip /opt/sclake/venv
COPY docker/requirements-worker-gpu.txt docker/overrides.txt /opt/sclake/docker/
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels \
        --override /opt/sclake/docker/overrides.txt -r /opt/sclake/docker/requirements-worker-gpu.txt
COPY pyproject.toml README.md /src/
COPY pipelines /src/pipelines
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels --no-deps /src

# ---- runtime: Python, the venv, the project's data folders, tini; no compiler, no uv, no wheels
FROM ${CUDA_IMAGE}
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
COPY --from=builder /opt/python /opt/python
COPY --from=builder /usr/local/bin/python3 /usr/local/bin/python3
COPY --from=builder /opt/sclake/venv /opt/sclake/venv
COPY schemas /opt/sclake/schemas
COPY dags /opt/sclake/dags
COPY docker/entrypoint.sh /usr/local/bin/sclake-entrypoint
COPY docker/dask-worker.sh /usr/local/bin/sclake-dask-worker
# Ubuntu 24.04 images have a user 1000 (ubuntu): sclake takes its place.
RUN python -c "import pipelines.cli, helical, torch, distributed, mlflow" \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --uid "${SCLAKE_UID}" --user-group --no-create-home --home-dir /data/home --shell /bin/bash sclake \
    && install -d -o "${SCLAKE_UID}" -g "${SCLAKE_UID}" /models /run/sclake-gpus \
    && install -d -m 1777 /data /data/home

USER ${SCLAKE_UID}
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/tini", "--", "/usr/local/bin/sclake-entrypoint"]
CMD ["sclake", "--help"]
