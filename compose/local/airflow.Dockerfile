# The Airflow image of the local stack: sclake-airflow with celery 5.6 instead of 5.7, which
# apache-airflow-providers-celery 3.26 cannot import (`celery.backends.database.retry` is
# gone). compose/local/build.sh builds it only while sclake-airflow holds celery 5.7 and
# otherwise tags sclake-airflow itself; the wheel (py3-none-any) is downloaded on the host.
ARG AIRFLOW_IMAGE=sclake-airflow:0.1.0
FROM ${AIRFLOW_IMAGE}
ARG CELERY_WHEEL=celery-5.6.3-py3-none-any.whl
COPY ${CELERY_WHEEL} /tmp/
USER 0
# The venv has no pip: a wheel is a zip archive, unpacked over the removed 5.7 files.
RUN site=$(/opt/sclake/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && rm -rf "${site}"/celery "${site}"/celery-*.dist-info \
    && /opt/sclake/venv/bin/python -m zipfile -e "/tmp/${CELERY_WHEEL}" "${site}" \
    && rm "/tmp/${CELERY_WHEEL}" \
    && /opt/sclake/venv/bin/python -c "from celery.backends.database import retry; import celery; print(celery.__version__)"
USER 50000
