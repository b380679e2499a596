#!/bin/sh
# Stand-in of compose/models/sync.sh with rclone: copy model files between the model cache
# volume (/models/.cache/helical/models) and the lake's models/ prefix.
#   models-sync.sh push   volume -> lake        models-sync.sh pull   lake -> volume
set -eu

direction=${1:-pull}
cache=/models/.cache/helical/models
lake_path=${SCLAKE_LAKE_URI#s3://}
if [ "$lake_path" = "$SCLAKE_LAKE_URI" ]; then
    echo "models-sync: SCLAKE_LAKE_URI=$SCLAKE_LAKE_URI is not an s3:// URI" >&2
    exit 2
fi
remote=":s3:${lake_path%/}/models"
s3="sh /opt/sclake-compose/rclone-s3.sh $SCLAKE_S3_ACCESS_KEY $SCLAKE_S3_SECRET_KEY"
case "$direction" in
    push) $s3 copy "$cache/" "$remote/" ;;
    pull)
        mkdir -p "$cache"
        $s3 copy "$remote/" "$cache/"
        chown -R "${SCLAKE_UID:-1000}:${SCLAKE_UID:-1000}" /models
        ;;
    *)
        echo "models-sync: direction ${direction} is not one of push, pull" >&2
        exit 2
        ;;
esac
echo "models-sync: $direction done"
