#!/bin/bash
# One-shot Airflow setup (idempotent): migrate the metadata database, create the admin user
# (the image's entrypoint does both, driven by the _AIRFLOW_* variables), then the pools the
# DAGs use, sized by SCLAKE_GPU_COUNT.
set -euo pipefail

/entrypoint airflow version
pools="$(mktemp --suffix=.json)"
sclake compose pools --gpus "${SCLAKE_GPU_COUNT:-0}" --output "${pools}"
airflow pools import "${pools}"
rm -f "${pools}"
echo "airflow-init: done"
