"""`sclake stack up | status | down` with real processes on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import s3fs

from pipelines.lake import s3_storage_options
from pipelines.settings import load_settings
from pipelines.stack import services
from pipelines.stack.process import _group_alive
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "SCLAKE_HOME": str(tmp_path / "home"),
        "SCLAKE_STACK_S3_PORT": str(free_port()),
        "SCLAKE_STACK_MLFLOW_PORT": str(free_port()),
        "SCLAKE_STACK_DASK_SCHEDULER_PORT": str(free_port()),
        "SCLAKE_STACK_DASK_DASHBOARD_PORT": str(free_port()),
        "SCLAKE_STACK_AIRFLOW_PORT": str(free_port()),
        "SCLAKE_STACK_PROMETHEUS_PORT": str(free_port()),
        "SCLAKE_STACK_PUSHGATEWAY_PORT": str(free_port()),
        "SCLAKE_STACK_NODE_EXPORTER_PORT": str(free_port()),
        "SCLAKE_STACK_AIRFLOW_EXPORTER_PORT": str(free_port()),
        "SCLAKE_STACK_ONLY": "s3,mlflow",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def sclake(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sclake")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_stack_up_status_down(stack_env: dict[str, str]) -> None:
    r = sclake("stack", "up")
    assert r.returncode == 0, r.stderr
    assert "s3" in r.stdout and "running" in r.stdout
    settings = load_settings()
    assert settings.lake_uri == "s3://lake"
    assert settings.s3_endpoint_url == f"http://127.0.0.1:{stack_env['SCLAKE_STACK_S3_PORT']}"
    # The printed endpoint and the generated keys give a working S3 listing.
    fs = s3fs.S3FileSystem(**s3_storage_options(settings))
    fs.pipe("lake/incoming/hello.txt", b"hi")
    assert fs.ls("lake/incoming") == ["lake/incoming/hello.txt"]
    stat = (Path(stack_env["SCLAKE_HOME"]) / "stack.env").stat()
    assert stat.st_mode & 0o077 == 0, "credentials file must be private"

    pids = {s.name: s.pid for s in services.status(settings)}
    again = sclake("stack", "up")  # idempotent
    assert again.returncode == 0, again.stderr
    assert {s.name: s.pid for s in services.status(settings)} == pids

    st = sclake("stack", "status", "--json")
    assert st.returncode == 0
    assert '"running"' in st.stdout

    down = sclake("stack", "down")
    assert down.returncode == 0
    assert all(not _group_alive(pid) for pid in pids.values() if pid)
    st = sclake("stack", "status")
    assert st.returncode == 1 and "stopped" in st.stdout


def test_port_taken_is_reported(stack_env: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(stack_env["SCLAKE_STACK_S3_PORT"])))
        blocker.listen()
        r = sclake("stack", "up")
    assert r.returncode == 1
    assert "port" in r.stderr and "taken" in r.stderr and "SCLAKE_STACK_S3_PORT" in r.stderr
    sclake("stack", "down")
