#!/bin/sh
# Copy model files between the model cache volume (/models, Helical's cache layout under
# .cache/helical/models) and the lake's models/ prefix.
#   sync.sh push   volume -> lake   (after models-fetch on a machine with internet)
#   sync.sh pull   lake -> volume   (on an offline cluster)
set -eu

direction=${1:-pull}
cache=/models/.cache/helical/models
lake_path=${SCLAKE_LAKE_URI#s3://}
if [ "$lake_path" = "$SCLAKE_LAKE_URI" ]; then
    echo "models-sync: SCLAKE_LAKE_URI=$SCLAKE_LAKE_URI is not an s3:// URI" >&2
    exit 2
fi
remote="lake/${lake_path%/}/models"

mc alias set lake http://minio:9000 "$SCLAKE_S3_ACCESS_KEY" "$SCLAKE_S3_SECRET_KEY"
case "$direction" in
    push)
        mc mirror --overwrite "$cache/" "$remote/"
        ;;
    pull)
        mkdir -p "$cache"
        mc mirror --overwrite "$remote/" "$cache/"
        # The worker images run as uid 1000: let them add files (e.g. synthetic models).
        chown -R "${SCLAKE_UID:-1000}:${SCLAKE_UID:-1000}" /models
        ;;
    *)
        echo "models-sync: direction ${direction} is not one of push, pull" >&2
        exit 2
        ;;
esac
echo "models-sync: $direction done"
