#!/bin/sh
# One-shot MinIO setup (idempotent): the lake bucket and MLflow's artifact bucket, each with
# its own user that may read and write that bucket and nothing else.
set -eu

# s3://bucket[/prefix] -> bucket
lake_path=${SCLAKE_LAKE_URI#s3://}
lake_bucket=${lake_path%%/*}
if [ "$lake_path" = "$SCLAKE_LAKE_URI" ] || [ -z "$lake_bucket" ]; then
    echo "minio-init: SCLAKE_LAKE_URI=$SCLAKE_LAKE_URI is not an s3://bucket[/prefix] URI" >&2
    exit 2
fi

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

# bucket_user BUCKET USER SECRET: the bucket, a read-write policy on it, and USER with that policy.
bucket_user() {
    bucket=$1
    user=$2
    secret=$3
    policy="${bucket}-readwrite"
    mc mb --ignore-existing "local/$bucket"
    cat >"/tmp/$policy.json" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$bucket"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                 "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$bucket/*"]
    }
  ]
}
JSON
    mc admin policy create local "$policy" "/tmp/$policy.json"
    mc admin user add local "$user" "$secret"
    if ! out=$(mc admin policy attach local "$policy" --user "$user" 2>&1); then
        case "$out" in
            *"already in effect"*) ;;
            *) echo "$out" >&2; exit 1 ;;
        esac
    fi
    echo "minio-init: bucket $bucket, user $user (policy $policy)"
}

bucket_user "$lake_bucket" "$SCLAKE_S3_ACCESS_KEY" "$SCLAKE_S3_SECRET_KEY"
bucket_user "$MLFLOW_ARTIFACTS_BUCKET" "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"

# The bearer token Prometheus scrapes MinIO's metrics with (MINIO_PROMETHEUS_AUTH_TYPE=jwt):
# `mc admin prometheus generate` prints a scrape config holding a JWT signed with the
# administrator's key; only the token goes to the file (on a volume Prometheus mounts
# read-only). Written again on every start, so it follows a changed MINIO_ROOT_PASSWORD.
if [ -n "${MINIO_METRICS_TOKEN_FILE:-}" ]; then
    token=$(mc admin prometheus generate local | sed -n 's/^[[:space:]]*bearer_token:[[:space:]]*//p' | head -n 1)
    if [ -z "$token" ]; then
        echo "minio-init: mc admin prometheus generate printed no bearer_token" >&2
        exit 1
    fi
    umask 022
    printf '%s\n' "$token" >"$MINIO_METRICS_TOKEN_FILE.tmp"
    chmod 444 "$MINIO_METRICS_TOKEN_FILE.tmp"
    mv -f "$MINIO_METRICS_TOKEN_FILE.tmp" "$MINIO_METRICS_TOKEN_FILE"
    echo "minio-init: metrics token in $MINIO_METRICS_TOKEN_FILE"
fi
