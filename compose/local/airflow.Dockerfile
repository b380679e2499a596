# The Airflow image of the local stack: sclake-airflow with the Python wheels in the build
# context (wheels/) unpacked over its venv. compose/local/build.sh puts there only what
# sclake-airflow lacks for the Celery worker, and tags sclake-airflow itself when nothing is:
#   celery 5.6    while it holds celery 5.7, which apache-airflow-providers-celery 3.26 cannot
#                 import (`celery.backends.database.retry` is gone)
#   async-timeout redis-py needs it on Python < 3.11.3 (Debian's is 3.11.2)
# The wheels (py3-none-any) are downloaded on the host.
ARG AIRFLOW_IMAGE=sclake-airflow:0.1.0
FROM ${AIRFLOW_IMAGE}
COPY wheels/ /tmp/wheels/
USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The venv has no pip: a pure-Python wheel is a zip archive, unpacked over the removed
# files of the version it replaces.
RUN site=$(/opt/sclake/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && for wheel in /tmp/wheels/*.whl; do \
        name=$(basename "${wheel}" | cut -d- -f1); \
        rm -rf "${site:?}/${name}" "${site}/${name}"-*.dist-info; \
        /opt/sclake/venv/bin/python -m zipfile -e "${wheel}" "${site}"; \
    done \
    && rm -rf /tmp/wheels \
    && /opt/sclake/venv/bin/python -c "from celery.backends.database import retry; import redis, kombu.transport.redis"
USER 50000
