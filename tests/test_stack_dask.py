"""The embedded stack's Dask cluster: `sclake stack up` starts a scheduler and workers, exports
SCLAKE_DASK_ADDRESS and lists the dashboard; `sclake stack down` stops them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipelines.settings import Settings
from pipelines.stack.dask import GPU_WORKER, WORKER, dask_services, machine_memory
from pipelines.stack.process import _group_alive
from pipelines.stack.services import read_env_file
from tests.conftest import free_port

SCLAKE = str(Path(sys.executable).with_name("sclake"))


def _argv_value(argv: list[str | None], flag: str) -> str | None:
    return argv[argv.index(flag) + 1]


def test_workers_are_sized_from_the_settings_and_the_machine(tmp_path: Path) -> None:
    sized = dask_services(Settings(home=tmp_path, stack_dask_workers=3, stack_dask_worker_memory="1GiB"))
    worker = next(s for s in sized if s.name == WORKER)
    assert _argv_value(worker.argv, "--nworkers") == "3"
    assert _argv_value(worker.argv, "--nthreads") == "1"
    assert _argv_value(worker.argv, "--memory-limit") == "1GiB"
    # Default: one worker per core; half of the memory shared among all workers (GPU ones too).
    default = dask_services(Settings(home=tmp_path))
    worker = next(s for s in default if s.name == WORKER)
    gpus = sum(1 for s in default if s.name.startswith(GPU_WORKER))
    cores = len(os.sched_getaffinity(0))
    assert _argv_value(worker.argv, "--nworkers") == str(cores)
    limit = int(str(_argv_value(worker.argv, "--memory-limit")).removesuffix("MiB")) * 2**20
    assert machine_memory() // 2 // (cores + gpus) - 2**20 < limit <= machine_memory() // 2 // (cores + gpus)
    for gpu in (s for s in default if s.name.startswith(GPU_WORKER)):
        assert _argv_value(gpu.argv, "--resources") == "GPU=1" and "CUDA_VISIBLE_DEVICES" in gpu.env


def test_a_module_that_fails_to_preload_does_not_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.stack import worker_preload

    monkeypatch.setattr(worker_preload, "MODULES", ("pipelines.no_such_module", "json"))
    with caplog.at_level("WARNING", logger=worker_preload.__name__):
        worker_preload.dask_setup()
    assert "preloading pipelines.no_such_module failed (ModuleNotFoundError" in caplog.text


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "DASK_"))}
    out.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_STACK_S3_PORT=str(free_port()),
        SCLAKE_STACK_DASK_SCHEDULER_PORT=str(free_port()),
        SCLAKE_STACK_DASK_DASHBOARD_PORT=str(free_port()),
        SCLAKE_STACK_DASK_WORKERS="2",
        SCLAKE_STACK_DASK_WORKER_MEMORY="1GiB",
        SCLAKE_STACK_ONLY="s3,dask-scheduler,dask-worker",
    )
    yield out
    subprocess.run([SCLAKE, "stack", "down"], env=out, capture_output=True, timeout=120)


def sclake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCLAKE, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.slow
def test_stack_runs_a_dask_cluster_and_exports_its_address(env: dict[str, str]) -> None:
    from distributed import Client

    home = Path(env["SCLAKE_HOME"])
    up = sclake(env, "stack", "up")
    assert up.returncode == 0, up.stderr[-3000:]
    address = f"tcp://127.0.0.1:{env['SCLAKE_STACK_DASK_SCHEDULER_PORT']}"
    dashboard = f"http://127.0.0.1:{env['SCLAKE_STACK_DASK_DASHBOARD_PORT']}/"
    assert read_env_file(home / "stack.env")["SCLAKE_DASK_ADDRESS"] == address
    assert f"Dask:        {address} (SCLAKE_DASK_ADDRESS), 2 worker(s) x 1 thread, 1GiB each" in up.stdout
    status = sclake(env, "stack", "status", "--json")
    assert status.returncode == 0, status.stdout
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert {rows[n]["state"] for n in ("s3", "dask-scheduler", "dask-worker")} == {"running"}
    assert rows["dask-scheduler"]["url"].startswith(dashboard) and rows["dask-worker"]["url"].startswith(dashboard)
    with urllib.request.urlopen(rows["dask-scheduler"]["url"], timeout=10) as r:
        assert r.status == 200

    # Steps reach the workers through the exported address; they run in the stack's folder, with sclake's config.
    def _worker_facts() -> dict[str, object]:  # nested: pickled by value, the workers cannot import tests/
        import os
        import sys

        import dask

        preloaded = "pipelines.ingest.convert" in sys.modules
        return {"cwd": os.getcwd(), "spill": dask.config.get("distributed.worker.memory.spill"), "preloaded": preloaded}

    with Client(address, timeout="20s", set_as_default=False) as client:
        facts = client.run(_worker_facts)
    assert len(facts) == 2
    expected = {"cwd": str(home / "dask" / "dask-worker"), "spill": False, "preloaded": True}
    assert all(f == expected for f in facts.values()), facts

    down = sclake(env, "stack", "down")
    assert down.returncode == 0 and "dask-worker" in down.stdout and "dask-scheduler" in down.stdout
    assert not any(_group_alive(rows[n]["pid"]) for n in ("dask-scheduler", "dask-worker"))
    after = sclake(env, "stack", "status", "--json")
    assert {r["name"]: r["state"] for r in json.loads(after.stdout)}["dask-worker"] == "stopped"


@pytest.mark.integration
def test_no_address_is_exported_without_workers(env: dict[str, str]) -> None:
    up = sclake(env | {"SCLAKE_STACK_ONLY": "s3,dask-scheduler"}, "stack", "up")
    assert up.returncode == 0, up.stderr[-3000:]
    assert "SCLAKE_DASK_ADDRESS" not in read_env_file(Path(env["SCLAKE_HOME"]) / "stack.env")
    status = sclake(env, "stack", "status", "--json")
    states = {r["name"]: r["state"] for r in json.loads(status.stdout)}
    assert states == {"s3": "running", "dask-scheduler": "running", "dask-worker": "not started"}, states


@pytest.mark.integration
def test_a_taken_dashboard_port_fails_up_with_the_setting_to_change(env: dict[str, str]) -> None:
    """Dask would quietly serve its dashboard elsewhere, and the health checks would ask whatever
    holds the port (another cluster's dashboard, e.g. a notebook's LocalCluster on 8787)."""
    import socket

    port = int(env["SCLAKE_STACK_DASK_DASHBOARD_PORT"])
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        up = sclake(env | {"SCLAKE_STACK_ONLY": "dask-scheduler"}, "stack", "up")
    assert up.returncode == 1, up.stdout + up.stderr
    assert f"dask-scheduler: port {port} on 127.0.0.1 is taken" in up.stderr, up.stderr
    assert "SCLAKE_STACK_DASK_DASHBOARD_PORT" in up.stderr


def test_light_steps_use_the_cluster_only_for_more_parts_than_their_threads(tmp_path: Path) -> None:
    from distributed import LocalCluster

    from pipelines.dask_cluster import cluster_or_threads

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        lake = f"file://{tmp_path / 'lake'}"
        settings = Settings(home=tmp_path, lake_uri=lake, dask_address=cluster.scheduler_address)
        threads = min(settings.dask_workers, os.cpu_count() or 1)
        with cluster_or_threads(settings, parts=threads) as client:
            assert client is None  # as many parts as its own threads take: no connection
        with cluster_or_threads(settings, parts=threads + 1) as client:
            assert client is not None and client.scheduler.address == cluster.scheduler_address
        with cluster_or_threads(settings) as client:  # embedding: always the configured cluster
            assert client is not None
    local = Settings(home=tmp_path, lake_uri=f"file://{tmp_path / 'lake'}", dask_address=None)
    with cluster_or_threads(local, parts=100) as client:
        assert client is None
