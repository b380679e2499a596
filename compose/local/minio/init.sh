#!/bin/sh
# One-shot setup of the S3 stand-in (idempotent), instead of compose/minio/init.sh: the lake
# bucket and MLflow's bucket, and a check that each user's key pair can list its bucket.
set -eu

lake_path=${SCLAKE_LAKE_URI#s3://}
lake_bucket=${lake_path%%/*}
if [ "$lake_path" = "$SCLAKE_LAKE_URI" ] || [ -z "$lake_bucket" ]; then
    echo "minio-init: SCLAKE_LAKE_URI=$SCLAKE_LAKE_URI is not an s3://bucket[/prefix] URI" >&2
    exit 2
fi
s3=/opt/sclake-compose/rclone-s3.sh

for bucket in "$lake_bucket" "$MLFLOW_ARTIFACTS_BUCKET"; do
    sh "$s3" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" mkdir ":s3:$bucket"
done
sh "$s3" "$SCLAKE_S3_ACCESS_KEY" "$SCLAKE_S3_SECRET_KEY" lsf ":s3:$lake_bucket" >/dev/null
sh "$s3" "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY" lsf ":s3:$MLFLOW_ARTIFACTS_BUCKET" >/dev/null
echo "minio-init: buckets $lake_bucket (user $SCLAKE_S3_ACCESS_KEY) and $MLFLOW_ARTIFACTS_BUCKET (user $MLFLOW_S3_ACCESS_KEY)"
