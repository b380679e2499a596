#!/bin/bash
# Entry point of the sclake-airflow image, like the official apache/airflow image's: the
# command is an Airflow sub-command and runs as `airflow <command>`:
#   docker run sclake-airflow:0.1.0 api-server        # airflow api-server
#   docker run sclake-airflow:0.1.0 celery worker     # airflow celery worker
# `airflow ...`, `bash`, `sh`, `python`, `sclake` and absolute paths run as they are.
set -euo pipefail

if (($# == 0)); then
    exec airflow --help
fi
case "$1" in
    airflow | bash | sh | python | python3 | sclake | /*)
        exec "$@"
        ;;
    *)
        exec airflow "$@"
        ;;
esac
