#!/bin/sh
# rclone as an S3 client of the stand-in: rclone-s3.sh ACCESS_KEY SECRET_KEY ARGS...
# (remote `:s3:`, e.g. `rclone-s3.sh "$KEY" "$SECRET" lsd :s3:`).
set -eu
key=$1
secret=$2
shift 2
exec rclone --s3-provider Other --s3-endpoint "${S3_ENDPOINT:-http://minio:9000}" \
    --s3-access-key-id "$key" --s3-secret-access-key "$secret" --s3-force-path-style=true \
    --low-level-retries 2 --retries 1 --log-level ERROR "$@"
