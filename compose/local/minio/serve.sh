#!/bin/sh
# The S3 server of the local stack, standing in for MinIO: `rclone serve s3` over /data (each
# top-level folder is a bucket). Every key pair may use every bucket: rclone has no users or
# policies, so the least-privilege users of minio-init are plain key pairs here.
set -eu

exec rclone serve s3 /data --addr :9000 --log-level NOTICE \
    --auth-key "$MINIO_ROOT_USER,$MINIO_ROOT_PASSWORD" \
    --auth-key "$SCLAKE_S3_ACCESS_KEY,$SCLAKE_S3_SECRET_KEY" \
    --auth-key "$MLFLOW_S3_ACCESS_KEY,$MLFLOW_S3_SECRET_KEY"
