"""`sclake stack` as a user meets it: a partial stack, services installed after `up`, a crashed
service, and a machine without Prometheus (metrics off, and said so)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCLAKE = str(Path(sys.executable).with_name("sclake"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    out.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_STACK_S3_PORT=str(free_port()),
        SCLAKE_STACK_MLFLOW_PORT=str(free_port()),
        SCLAKE_STACK_DASK_SCHEDULER_PORT=str(free_port()),
        SCLAKE_STACK_DASK_DASHBOARD_PORT=str(free_port()),
        SCLAKE_STACK_AIRFLOW_PORT=str(free_port()),
        SCLAKE_STACK_PROMETHEUS_PORT=str(free_port()),
        SCLAKE_STACK_PUSHGATEWAY_PORT=str(free_port()),
        SCLAKE_STACK_NODE_EXPORTER_PORT=str(free_port()),
        SCLAKE_STACK_AIRFLOW_EXPORTER_PORT=str(free_port()),
    )
    yield out
    subprocess.run([SCLAKE, "stack", "down"], env={**out, "SCLAKE_STACK_ONLY": ""}, capture_output=True, timeout=120)


def sclake(env: dict[str, str], *args: str, only: str = "s3", hide: tuple[str, ...] = ()):
    """Run the CLI; ``hide`` makes those programs unavailable (a mount namespace binds /dev/null over them)."""
    cmd = [SCLAKE, *args]
    if hide:
        binds = " ".join(f"mount --bind /dev/null {shutil.which(h) or '/usr/bin/' + h};" for h in hide)
        cmd = ["unshare", "--mount", "sh", "-c", f'{binds} exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, env={**env, "SCLAKE_STACK_ONLY": only}, capture_output=True, text=True, timeout=300)


def states(env: dict[str, str], only: str) -> tuple[int, dict[str, str]]:
    r = sclake(env, "stack", "status", "--json", only=only)
    return r.returncode, {row["name"]: row["state"] for row in json.loads(r.stdout)}


def test_a_partial_stack_comes_up_and_tells_not_started_from_failed(env: dict[str, str]) -> None:
    up = sclake(env, "stack", "up", only="s3")
    assert up.returncode == 0, up.stderr
    assert "Traceback" not in up.stderr and "KeyError" not in up.stderr
    # MLflow is not part of this stack's start: "not started", and that is no failure.
    code, seen = states(env, "s3,mlflow")
    assert seen == {"s3": "running", "mlflow": "not started"} and code == 0, seen
    # The S3 server dies: "failed", exit 1.
    pid = int((Path(env["SCLAKE_HOME"]) / "run" / "s3.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    code, seen = states(env, "s3,mlflow")
    assert seen["s3"] == "failed" and code == 1, seen
    # After `down`, the stack is stopped (exit 1: nothing runs).
    sclake(env, "stack", "down", only="s3,mlflow")
    code, seen = states(env, "s3")
    assert seen == {"s3": "stopped"} and code == 1, seen


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for unshare --mount")
def test_without_prometheus_up_says_metrics_are_off_and_how_to_turn_them_on(env: dict[str, str]) -> None:
    up = sclake(env, "stack", "up", only="s3", hide=("prometheus", "prometheus-pushgateway"))
    assert up.returncode == 0, up.stderr
    assert "Metrics are OFF" in up.stdout, up.stdout
    assert "apt-get install prometheus prometheus-pushgateway prometheus-node-exporter" in up.stdout
    with_it = sclake(env, "stack", "up", only="s3")
    assert ("Metrics are OFF" in with_it.stdout) == (shutil.which("prometheus") is None)
