"""Names the compose stack (``compose/docker-compose.yml``) defines, for code that starts containers in it.

Airflow's DockerOperator (``SCLAKE_EXECUTION_MODE=docker``) starts each step in the worker
image next to the compose services. The container must reach the Docker API through the
socket proxy, join the stack's network, mount the model cache and scratch volumes and, for
GPU steps, claim its GPUs the way the Dask GPU workers do. :func:`docker_operator_kwargs`
gathers all of that; the constants are the single source the compose file is tested
against (``tests/test_compose.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.settings import Settings

COMPOSE_FILE = "compose/docker-compose.yml"
ENV_TEMPLATE = ".env.example"
ENV_FILE = "compose/.env"

# The Docker API as the Airflow workers reach it: a socket proxy, never the raw socket.
DOCKER_PROXY_SERVICE = "docker-socket-proxy"
DOCKER_URL = f"tcp://{DOCKER_PROXY_SERVICE}:2375"
DOCKER_API_NETWORK = "sclake-docker-api"

# The network every service and every step container is on.
NETWORK = "sclake"

# Images built from docker/ (their tags in .env.example carry the sclake version).
IMAGE_VERSION = "0.1.0"
AIRFLOW_IMAGE = f"sclake-airflow:{IMAGE_VERSION}"
WORKER_IMAGE = f"sclake-worker:{IMAGE_VERSION}-cpu"
WORKER_CUDA_IMAGE = f"sclake-worker:{IMAGE_VERSION}-cuda"

# Named volumes (fixed names, so containers started outside compose mount them) and where.
MODEL_CACHE_VOLUME = "sclake-models"
MODEL_CACHE_PATH = "/models"
DATA_VOLUME = "sclake-data"
DATA_PATH = "/data"
GPU_LOCK_VOLUME = "sclake-gpu-locks"
GPU_LOCK_PATH = "/run/sclake-gpus"
STEP_MOUNTS: tuple[tuple[str, str], ...] = (
    (MODEL_CACHE_VOLUME, MODEL_CACHE_PATH),
    (DATA_VOLUME, DATA_PATH),
    (GPU_LOCK_VOLUME, GPU_LOCK_PATH),
)

# The worker images' entry point claims this many free GPUs (see docker/entrypoint.sh).
GPU_CLAIM_ENV = "SCLAKE_GPU_CLAIM"
GPU_CLAIM_TIMEOUT_ENV = "SCLAKE_GPU_CLAIM_TIMEOUT"
GPU_CLAIM_TIMEOUT_S = 3600

# Service names other containers address.
SERVICES = {
    "s3": "minio",
    "mlflow": "mlflow",
    "dask_scheduler": "dask-scheduler",
    "pushgateway": "pushgateway",
    "statsd": "statsd-exporter",
    "airflow_api": "airflow-apiserver",
}

DEFAULT_QUEUE = "default"


def step_environment(settings: Settings, gpus: int = 0) -> dict[str, str]:
    """Environment of a step container, without secrets (shown in Airflow's rendered templates).

    Parameters
    ----------
    settings
        The Airflow worker's settings: endpoints are passed on as they are (service names).
    gpus
        GPUs the step needs; the container claims that many free GPUs at start.
    """
    env = {
        "SCLAKE_LAKE_URI": settings.lake_uri,
        "SCLAKE_S3_REGION": settings.s3_region,
        "SCLAKE_HOME": f"{DATA_PATH}/home",
        "SCLAKE_MODELS_DIR": MODEL_CACHE_PATH,
        "CACHE_DIR_HELICAL_PREFIX": MODEL_CACHE_PATH,
        "SCLAKE_MODELS": settings.models,
        "SCLAKE_LOG_LEVEL": settings.log_level,
        # How the run computes: the same parts, and the same local Dask cluster as the
        # Airflow worker would start (it must fit the container's memory limit).
        "SCLAKE_PART_CELLS": str(settings.part_cells),
        "SCLAKE_SHARD_CELLS": str(settings.shard_cells),
        "SCLAKE_DASK_WORKERS": str(settings.dask_workers),
        "SCLAKE_DASK_WORKER_MEMORY": settings.dask_worker_memory,
        "SCLAKE_CPU_ATTENTION": settings.cpu_attention,
        "HF_HUB_OFFLINE": "1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    optional = {
        "SCLAKE_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "SCLAKE_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SCLAKE_DASK_ADDRESS": settings.dask_address,
        "SCLAKE_PUSHGATEWAY_URL": settings.pushgateway_url,
    }
    env.update({k: v for k, v in optional.items() if v})
    if gpus > 0:
        env[GPU_CLAIM_ENV] = str(gpus)
        env[GPU_CLAIM_TIMEOUT_ENV] = str(GPU_CLAIM_TIMEOUT_S)
    return env


def step_private_environment(settings: Settings) -> dict[str, str]:
    """The secrets of a step container (the DockerOperator's ``private_environment``: never rendered)."""
    env = {"SCLAKE_S3_ACCESS_KEY": settings.s3_access_key, "SCLAKE_S3_SECRET_KEY": settings.s3_secret_key}
    return {k: v for k, v in env.items() if v}


def docker_operator_kwargs(settings: Settings, gpus: int = 0) -> dict[str, Any]:
    """Keyword arguments of a ``DockerOperator`` that runs a step in the worker image.

    ``settings.docker_stack`` picks the layout: :func:`compose_step_layout` (the compose
    stack's socket proxy, network and named volumes) or :func:`embedded_step_layout` (the
    local engine next to the embedded stack).

    Parameters
    ----------
    settings
        Settings of the Airflow worker (``worker_image`` names the image).
    gpus
        GPUs the step needs (from the model's resource profile). Docker gives a container
        asking for ``count=N`` GPUs always the first N, so the container is given every
        GPU and claims ``gpus`` free ones itself (``SCLAKE_GPU_CLAIM``), waiting up to
        ``GPU_CLAIM_TIMEOUT_S`` for them.

    Returns
    -------
    dict
        ``image``, ``docker_url``, ``network_mode``, ``mounts``, ``device_requests``,
        ``environment``, ``private_environment``, ``mount_tmp_dir`` (off: the Airflow
        worker's temporary folder need not exist on the Docker host), ``auto_remove``
        (``force``: the container is removed whatever happened) and, in the embedded
        layout, ``user``.
    """
    if gpus < 0:
        raise ValueError(f"gpus={gpus!r} must be 0 or more")
    from docker.types import DeviceRequest

    layout = (
        compose_step_layout(settings, gpus)
        if settings.docker_stack == "compose"
        else embedded_step_layout(settings, gpus)
    )
    return {
        "image": settings.worker_image,
        "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
        "private_environment": step_private_environment(settings),
        "mount_tmp_dir": False,
        "auto_remove": "force",
        **layout,
    }


def compose_step_layout(settings: Settings, gpus: int = 0) -> dict[str, Any]:
    """Docker API, network, volumes and environment of a step container in the compose stack."""
    from docker.types import Mount

    return {
        "docker_url": settings.docker_url or DOCKER_URL,
        "network_mode": NETWORK,
        "mounts": [Mount(target=path, source=volume, type="volume") for volume, path in STEP_MOUNTS],
        "environment": step_environment(settings, gpus),
    }


def embedded_step_layout(settings: Settings, gpus: int = 0) -> dict[str, Any]:
    """Docker API, network, mounts and environment of a step container beside the embedded stack.

    - The host's network: the embedded services listen on ``SCLAKE_STACK_HOST`` (loopback by
      default), which a container on a bridge network cannot reach.
    - The model cache is bind-mounted read-only at the same path, so model paths in lineage
      are the host's; a ``file://`` lake (and a local MLflow store) is bind-mounted read-write.
    - The container runs as the calling user, so that what it writes on bind mounts is theirs.
    - GPU claims use ``SCLAKE_HOME/gpu-locks`` (shared by every step container on the host).
    """
    import os

    from docker.types import Mount

    models = settings.helical_prefix()
    mounts = [Mount(target=str(models), source=str(models), type="bind", read_only=True)]
    for folder in _writable_folders(settings):
        mounts.append(Mount(target=str(folder), source=str(folder), type="bind"))
    env = step_environment(settings, gpus)
    env.update(
        SCLAKE_MODELS_DIR=str(models),
        CACHE_DIR_HELICAL_PREFIX=str(models),
        SCLAKE_HOME="/tmp/sclake-home",  # scratch of one step: nothing in it outlives the container
    )
    if gpus:
        locks = settings.home.resolve() / "gpu-locks"
        locks.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(target=GPU_LOCK_PATH, source=str(locks), type="bind"))
    return {
        "docker_url": settings.docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock",
        "network_mode": "host",
        "mounts": mounts,
        "environment": env,
        "user": f"{os.getuid()}:{os.getgid()}",
    }


def _writable_folders(settings: Settings) -> list[Path]:
    """Host folders a step writes to: a ``file://`` lake and a local MLflow store (SQLite or files)."""
    from urllib.parse import urlparse

    folders: list[Path] = []
    lake = urlparse(settings.lake_uri)
    if lake.scheme == "file":
        folders.append(Path(lake.path))
    tracking = settings.mlflow_tracking_uri or ""
    if tracking.startswith("sqlite:///"):
        folders.append(Path(tracking.removeprefix("sqlite:///")).parent)
    elif tracking.startswith("file://"):
        folders.append(Path(urlparse(tracking).path))
    out: list[Path] = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.is_relative_to(o) for o in out):
            out = [o for o in out if not o.is_relative_to(folder)] + [folder]
    return out


def airflow_pools(settings: Settings, gpus: int) -> dict[str, dict[str, Any]]:
    """The Airflow pools of the compose stack, in ``airflow pools import`` format.

    The same pools as the embedded stack (``pipelines.stack.airflow.pools``), except that
    pools of GPU profiles get one slot per GPU of the host (``gpus``; at least one).
    """
    from pipelines.stack.airflow import pools

    out = {
        name: {"slots": slots, "description": description, "include_deferred": False}
        for name, (slots, description) in pools(settings).items()
    }
    for profile in _profiles():
        if profile.device_class == "gpu" and profile.airflow_pool in out:
            out[profile.airflow_pool]["slots"] = max(gpus, 1)
    return out


def worker_queues() -> list[str]:
    """Celery queues an Airflow worker consumes: ``default`` and every resource profile's queue."""
    queues = [DEFAULT_QUEUE]
    for profile in _profiles():
        queue = getattr(profile, "airflow_queue", None)
        if queue and queue not in queues:
            queues.append(queue)
    return queues


def _profiles() -> list[Any]:
    try:
        from pipelines.profiles import load_profiles
    except ModuleNotFoundError as e:  # a build without resource profiles
        if e.name != "pipelines.profiles":
            raise
        return []
    return list(load_profiles().values())
