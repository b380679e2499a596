# syntax=docker/dockerfile:1
# The Airflow image of the compose stack: apache/airflow (slim, no extras) plus the
# project's locked dependencies, the deploy-airflow group (Celery executor, FAB auth
# manager, StatsD, Postgres driver), the sclake package and its DAGs. Nothing is installed
# when a container starts (no _PIP_ADDITIONAL_REQUIREMENTS).
#
# Build from the repository root (compose does this):
#   docker build -f docker/airflow.Dockerfile -t sclake-airflow:0.1.0 .
ARG AIRFLOW_IMAGE=apache/airflow:slim-3.3.2-python3.11
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${AIRFLOW_IMAGE}
# torch's CPU build (the version uv.lock pins) comes from the PyTorch index; everything else from PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    SCLAKE_SCHEMAS_DIR=/opt/sclake/schemas \
    SCLAKE_DAGS_FOLDER=/opt/sclake/dags \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/sclake/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# The base image's `airflow` user is uid 50000, group 0.
USER 0
COPY --from=uv /uv /usr/local/bin/uv
RUN install -d -o 50000 -g 0 -m 0775 /opt/sclake
USER 50000

# Installs into the image's Python environment (the `python` first on PATH), with the lock's pins.
COPY --chown=50000:0 docker/requirements-airflow.txt docker/overrides.txt /opt/sclake/docker/
RUN uv pip install --python "$(command -v python)" --no-deps --index-url "${TORCH_INDEX_URL}" \
        "$(grep -E '^torch==' /opt/sclake/docker/requirements-airflow.txt)" \
    && uv pip install --python "$(command -v python)" \
        --override /opt/sclake/docker/overrides.txt \
        -r /opt/sclake/docker/requirements-airflow.txt

# The project (editable, so that schemas/ and dags/ stay beside the package).
COPY --chown=50000:0 . /opt/sclake
RUN uv pip install --python "$(command -v python)" --no-deps --editable /opt/sclake \
    && python -c "import pipelines.cli, airflow.providers.celery, airflow.providers.fab, airflow.providers.docker"
