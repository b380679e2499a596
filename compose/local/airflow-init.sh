#!/bin/bash
# airflow-init of the local stack: compose/airflow/init.sh where the image has the official
# image's /entrypoint; otherwise the same steps done here: migrate the metadata database,
# create the admin user (FAB), import the pools sized by SCLAKE_GPU_COUNT.
set -euo pipefail

if [ -x /entrypoint ]; then
    exec bash /opt/sclake-compose/airflow-init-upstream.sh
fi
airflow db migrate
if ! airflow users list --output plain 2>/dev/null | awk '{print $2}' | grep -qx "${_AIRFLOW_WWW_USER_USERNAME}"; then
    airflow users create --role Admin --username "${_AIRFLOW_WWW_USER_USERNAME}" \
        --password "${_AIRFLOW_WWW_USER_PASSWORD}" --firstname Airflow --lastname Admin \
        --email admin@example.org
fi
pools="$(mktemp --suffix=.json)"
sclake compose pools --gpus "${SCLAKE_GPU_COUNT:-0}" --output "${pools}"
airflow pools import "${pools}"
rm -f "${pools}"
echo "airflow-init: done"
