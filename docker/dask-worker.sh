#!/bin/bash
# Start a Dask worker connected to $SCLAKE_DASK_ADDRESS.
#
#   sclake-dask-worker [dask worker options...]        a CPU worker
#   sclake-dask-worker --gpu [dask worker options...]  a GPU worker: claims one GPU (see
#                                                      sclake-entrypoint) and advertises
#                                                      the Dask resource GPU=1
set -euo pipefail

scheduler="${SCLAKE_DASK_ADDRESS:?SCLAKE_DASK_ADDRESS must name the Dask scheduler, e.g. tcp://dask-scheduler:8786}"
if [[ "${1:-}" == "--gpu" ]]; then
    shift
    SCLAKE_GPU_CLAIM=1 exec /usr/local/bin/sclake-entrypoint \
        dask worker "${scheduler}" --resources "GPU=1" --nworkers 1 --nthreads 1 "$@"
fi
exec dask worker "${scheduler}" "$@"
