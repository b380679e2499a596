# The Airflow image of the compose stack: Airflow 3.3 with the project's locked
# dependencies (CPU build of torch), the deploy-airflow group (Celery executor, FAB auth
# manager, StatsD, Postgres driver), the sclake package and its DAGs. Nothing is installed
# when a container starts (no _PIP_ADDITIONAL_REQUIREMENTS).
#
# The base is apache/airflow (slim, no extras) or, where it cannot be pulled, the local
# Debian base (tools/base-image.sh): Airflow itself comes from the wheelhouse either way,
# into a venv of its own, and nothing is downloaded while building (`make images`):
#   docker build --network none -f docker/airflow.Dockerfile \
#       --build-arg AIRFLOW_IMAGE=sclake-base:bookworm -t sclake-airflow:0.1.0 .
# The entry point runs `airflow <command>` as the official image does (`api-server`,
# `scheduler`, `celery worker`, ...), as the user airflow (uid 50000, gid 0).
ARG AIRFLOW_IMAGE=apache/airflow:slim-3.3.2-python3.11
ARG WHEELHOUSE_IMAGE=sclake-wheelhouse:0.1.0

FROM ${WHEELHOUSE_IMAGE} AS wheelhouse

# ---- builder: the venv, from the wheelhouse only
FROM ${AIRFLOW_IMAGE} AS builder
# hadolint ignore=DL3002
USER 0
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
COPY --from=wheelhouse /wheels /wheels
# uv from its wheel; the venv on the base's python3 (the same path in the runtime stage).
RUN python3 -m zipfile -e /wheels/uv-*.whl /tmp/uv \
    && install -m 0755 /tmp/uv/uv-*.data/scripts/uv /usr/local/bin/uv \
    && python3 -m venv --without-pip /opt/sclake/venv
COPY docker/requirements-airflow.txt docker/overrides.txt /opt/sclake/docker/
# --python-version: the lock's pins were resolved for CPython 3.11.13 (docker/export_requirements.py);
# Debian's 3.11.2 runs them, but soupsieve declares Requires-Python >=3.11.5.
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels \
        --python-version 3.11.13 --override /opt/sclake/docker/overrides.txt -r /opt/sclake/docker/requirements-airflow.txt
COPY pyproject.toml README.md /src/
COPY pipelines /src/pipelines
RUN uv pip install --python /opt/sclake/venv/bin/python --no-index --find-links /wheels --no-deps /src

# ---- runtime
FROM ${AIRFLOW_IMAGE}
USER 0
ENV VIRTUAL_ENV=/opt/sclake/venv \
    PATH=/opt/sclake/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/sclake/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    SCLAKE_SCHEMAS_DIR=/opt/sclake/schemas \
    SCLAKE_DAGS_FOLDER=/opt/sclake/dags \
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
COPY docker/airflow-entrypoint.sh /usr/local/bin/sclake-airflow-entrypoint
# The official image's user: airflow, uid 50000, primary group 0 (root), home /home/airflow.
RUN (getent passwd airflow >/dev/null \
        || useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow --shell /bin/bash airflow) \
    && install -d -o 50000 -g 0 -m 0775 /opt/airflow /opt/airflow/logs /opt/airflow/plugins \
    && python -c "import pipelines.cli, airflow.providers.celery, airflow.providers.fab, airflow.providers.docker"

USER 50000
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/local/bin/tini", "--", "/usr/local/bin/sclake-airflow-entrypoint"]
CMD ["--help"]
