#!/bin/bash
# Entry point of the worker images.
#
# With SCLAKE_GPU_CLAIM=N (N > 0) the container claims N GPUs that no other container on
# this host holds, sets CUDA_VISIBLE_DEVICES to them and runs its command. Docker gives a
# container that asks for `count: N` GPUs always the first N, so containers that share a
# host claim GPUs here instead: each is started with every GPU visible and takes an
# exclusive lock per GPU in $SCLAKE_GPU_LOCK_DIR, a volume every worker container mounts.
# The locks are held by the command's process and released when it exits.
#
# SCLAKE_GPU_CLAIM_TIMEOUT: seconds to wait for free GPUs (default 0: fail at once).
set -euo pipefail

claim="${SCLAKE_GPU_CLAIM:-0}"
if [[ "${claim}" == "0" ]]; then
    exec "$@"
fi
if ! [[ "${claim}" =~ ^[1-9][0-9]*$ ]]; then
    echo "sclake-entrypoint: SCLAKE_GPU_CLAIM=${claim@Q} is not a whole number of GPUs" >&2
    exit 2
fi

lock_dir="${SCLAKE_GPU_LOCK_DIR:-/run/sclake-gpus}"
timeout="${SCLAKE_GPU_CLAIM_TIMEOUT:-0}"
if ! gpus="$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>&1)"; then
    echo "sclake-entrypoint: SCLAKE_GPU_CLAIM=${claim} but no GPU is visible (${gpus})" >&2
    exit 2
fi
mkdir -p "${lock_dir}"

deadline=$((SECONDS + timeout))
while true; do
    held=()
    fds=()
    for uuid in ${gpus}; do
        exec {fd}>"${lock_dir}/${uuid}.lock"
        if flock --nonblock "${fd}"; then
            held+=("${uuid}")
            fds+=("${fd}")
            if ((${#held[@]} == claim)); then
                CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${held[*]}")"
                export CUDA_VISIBLE_DEVICES
                echo "sclake-entrypoint: claimed GPU(s) ${CUDA_VISIBLE_DEVICES}" >&2
                exec "$@"
            fi
        else
            exec {fd}>&-
        fi
    done
    # Not enough free GPUs: release the ones taken, then wait or give up.
    for fd in "${fds[@]}"; do
        exec {fd}>&-
    done
    if ((SECONDS >= deadline)); then
        echo "sclake-entrypoint: ${claim} free GPU(s) needed, fewer are free on this host" \
            "(each GPU serves one worker; scale GPU workers to at most the number of GPUs)" >&2
        exit 75
    fi
    sleep 5
done
