#!/bin/sh
# Refuse to start while a secret is missing, too short, or still the .env.example placeholder.
# The secrets arrive as environment variables (see the preflight service).
set -eu

status=0
for name in MINIO_ROOT_PASSWORD SCLAKE_S3_SECRET_KEY MLFLOW_S3_SECRET_KEY POSTGRES_PASSWORD \
    AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD REDIS_PASSWORD AIRFLOW_ADMIN_PASSWORD AIRFLOW_FERNET_KEY \
    AIRFLOW_JWT_SECRET AIRFLOW_API_SECRET_KEY GRAFANA_ADMIN_PASSWORD; do
    value=$(printenv "$name" || true)
    if [ -z "$value" ] || [ "$value" = "change-me" ]; then
        echo "preflight: $name is not set: run \`sclake compose env\` to generate compose/.env" >&2
        status=1
    elif [ "${#value}" -lt 16 ]; then
        echo "preflight: $name is shorter than 16 characters" >&2
        status=1
    fi
done
if [ "$status" -eq 0 ]; then
    echo "preflight: every secret is set"
fi
exit "$status"
