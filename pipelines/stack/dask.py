"""The embedded stack's Dask cluster: one ``dask scheduler`` and its ``dask worker`` processes.

Steps started with the stack's environment (Airflow tasks, ``sclake run``) read
``SCLAKE_DASK_ADDRESS`` from ``stack.env`` and compute on these workers, instead of
starting a ``LocalCluster`` of their own in every task (10-20 s each on two cores).

Sizing: ``SCLAKE_STACK_DASK_WORKERS`` worker processes (default: one per core), one
thread each, each limited to ``SCLAKE_STACK_DASK_WORKER_MEMORY`` (default: half of the
machine's memory shared among them). With GPUs (``nvidia-smi -L``) there is one more
worker per GPU, with ``--resources GPU=1`` and only that GPU visible, for the profiles'
GPU work. Workers run with :data:`pipelines.dask_cluster.WORKER_CONFIG` in
``$SCLAKE_HOME/dask/`` (their working and scratch folder, not the caller's), import the
task modules once at start (:mod:`pipelines.stack.worker_preload`), and share nothing
with the steps but the lake: every task gets its settings and URIs as arguments. They are
long-lived, so after a code change ``sclake stack down && sclake stack up`` restarts them
on the new code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipelines.dask_cluster import worker_config_environ
from pipelines.settings import Settings
from pipelines.stack.process import Service, venv_binary

SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"
GPU_WORKER = "dask-gpu-worker"
PRELOAD = "pipelines.stack.worker_preload"  # imports the task modules once per worker, never fatally
INSTALL_HINT = "Install distributed (a dependency of sclake: run `uv sync`)."


def dask_dir(settings: Settings) -> Path:
    return settings.home / "dask"


def scheduler_address(settings: Settings) -> str:
    """What ``SCLAKE_DASK_ADDRESS`` is set to in ``stack.env``."""
    return f"tcp://{settings.stack_host}:{settings.stack_dask_scheduler_port}"


def dashboard_url(settings: Settings) -> str:
    """The dashboard's page: Dask's own with bokeh installed, else the scheduler's worker table."""
    base = f"http://{settings.stack_host}:{settings.stack_dask_dashboard_port}"
    return f"{base}/status" if importlib.util.find_spec("bokeh") else f"{base}/info/main/workers.html"


def machine_memory() -> int:
    """Bytes of memory this machine (or its cgroup's limit, when lower) offers."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def worker_sizing(settings: Settings, gpus: int) -> tuple[int, str]:
    """CPU worker processes, and the memory limit of every worker (the CPU ones and one per GPU)."""
    n = settings.stack_dask_workers or len(os.sched_getaffinity(0))
    if settings.stack_dask_worker_memory:
        return n, settings.stack_dask_worker_memory
    share = machine_memory() // 2 // (n + gpus)
    return n, f"{share // 2**20}MiB"


def workers_registered(settings: Settings, name: str, count: int) -> Callable[[], bool]:
    """Health check of a worker service: ``count`` workers named ``name`` (or ``name-<i>``) are
    registered with the scheduler (its ``/json/identity.json``)."""
    url = f"http://{settings.stack_host}:{settings.stack_dask_dashboard_port}/json/identity.json"

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - the local scheduler
                workers = json.load(r).get("workers", {}).values()
        except (urllib.error.URLError, OSError, ValueError):
            return False
        names = [str(w.get("name", "")) for w in workers]
        return sum(1 for n in names if n == name or n.startswith(f"{name}-")) >= count

    return check


def _environ() -> dict[str, str]:
    # The project's parent on the path: the processes run in $SCLAKE_HOME/dask, not in a checkout.
    return {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), **worker_config_environ()}


def scheduler_service(settings: Settings) -> Service:
    host = settings.stack_host
    return Service(
        name=SCHEDULER,
        argv=[
            venv_binary("dask"),
            "scheduler",
            "--host",
            host,
            "--port",
            str(settings.stack_dask_scheduler_port),
            "--dashboard-address",
            f"{host}:{settings.stack_dask_dashboard_port}",
        ],
        host=host,
        port=settings.stack_dask_scheduler_port,
        # Dask would serve its dashboard on another port when this one is taken, and the
        # health checks would then ask whatever holds it (another cluster's dashboard).
        more_ports={settings.stack_dask_dashboard_port: "SCLAKE_STACK_DASK_DASHBOARD_PORT"},
        health_url=f"http://{host}:{settings.stack_dask_dashboard_port}/health",
        link=dashboard_url(settings),
        env=_environ(),
        cwd=dask_dir(settings),
        prepare=lambda: dask_dir(settings).mkdir(parents=True, exist_ok=True),
        install_hint=INSTALL_HINT,
    )


def worker_service(settings: Settings, name: str, n: int, memory: str, gpu: int | None = None) -> Service:
    """``n`` worker processes named ``name``; with ``gpu``, that GPU alone and the ``GPU=1`` resource."""
    host = settings.stack_host
    space = dask_dir(settings) / name
    argv = [venv_binary("dask"), "worker", scheduler_address(settings), "--name", name, "--nworkers", str(n)]
    argv += ["--nthreads", "1", "--memory-limit", memory, "--host", host, "--dashboard-address", f"{host}:0"]
    argv += ["--local-directory", str(space), "--preload", PRELOAD]
    env = _environ()
    if gpu is not None:
        argv += ["--resources", "GPU=1"]
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return Service(
        name=name,
        argv=argv,
        host=host,
        port=None,
        link=dashboard_url(settings),
        health=workers_registered(settings, name, n),
        env=env,
        cwd=space,
        prepare=lambda: space.mkdir(parents=True, exist_ok=True),
        startup_timeout=180.0,
        install_hint=INSTALL_HINT,
    )


def dask_services(settings: Settings) -> list[Service]:
    """The scheduler, the CPU workers, and one worker per GPU, in start order."""
    from pipelines.stack.airflow import gpu_count

    gpus = gpu_count()
    n, memory = worker_sizing(settings, gpus)
    services = [scheduler_service(settings), worker_service(settings, WORKER, n, memory)]
    services += [worker_service(settings, f"{GPU_WORKER}-{i}", 1, memory, gpu=i) for i in range(gpus)]
    return services


def dask_env(settings: Settings, started: set[str]) -> dict[str, str]:
    """``SCLAKE_DASK_ADDRESS`` for ``stack.env``, once the scheduler and its CPU workers run."""
    return {"SCLAKE_DASK_ADDRESS": scheduler_address(settings)} if {SCHEDULER, WORKER} <= started else {}


def dask_notes(settings: Settings) -> list[str]:
    from pipelines.stack.airflow import gpu_count

    gpus = gpu_count()
    n, memory = worker_sizing(settings, gpus)
    gpu = f" + {gpus} GPU worker(s) (resource GPU=1)" if gpus else ""
    return [
        f"Dask:        {scheduler_address(settings)} (SCLAKE_DASK_ADDRESS), {n} worker(s) x 1 thread, "
        f"{memory} each{gpu}; dashboard {dashboard_url(settings)}"
    ]
