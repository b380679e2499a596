"""The embedded stack keeps its secrets to the user who runs it: private files, no secret in
any process's arguments or in any log, and every port on SCLAKE_STACK_HOST."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipelines.stack.services import read_env_file
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCLAKE = str(Path(sys.executable).with_name("sclake"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("private") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        SCLAKE_HOME=str(home),
        **{
            f"SCLAKE_STACK_{name}_PORT": str(free_port())
            for name in (
                "S3",
                "MLFLOW",
                "DASK_SCHEDULER",
                "DASK_DASHBOARD",
                "AIRFLOW",
                "PROMETHEUS",
                "PUSHGATEWAY",
                "NODE_EXPORTER",
                "AIRFLOW_EXPORTER",
            )
        },
    )
    up = subprocess.run([SCLAKE, "stack", "up", "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    rows = json.loads(up.stdout)
    yield home, env, rows
    subprocess.run([SCLAKE, "stack", "down"], env=env, capture_output=True, timeout=300)


def _tree(rows) -> list[psutil.Process]:
    procs = []
    for row in rows:
        if row["pid"]:
            try:
                parent = psutil.Process(row["pid"])
            except psutil.NoSuchProcess:
                continue
            procs += [parent, *parent.children(recursive=True)]
    return procs


def test_private_files_are_private(stack) -> None:
    home, _, _ = stack
    private = [
        home / "stack.env",
        home / "airflow" / "simple_auth_manager_passwords.json.generated",
        home / "airflow" / "airflow.db",
        home / "mlflow" / "mlflow.db",
        *sorted((home / "logs").glob("*.log")),
    ]
    for path in private:
        assert path.exists(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}"


def test_no_secret_in_arguments_or_logs(stack) -> None:
    home, _, rows = stack
    secrets = {v for k, v in read_env_file(home / "stack.env").items() if k.endswith(("SECRET_KEY", "ACCESS_KEY"))}
    passwords = json.loads((home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
    secrets |= set(passwords.values())
    assert secrets and all(len(s) >= 8 for s in secrets)
    for proc in _tree(rows):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        assert not any(s in cmdline for s in secrets), f"a secret in the arguments of {proc.pid}: {proc.name()}"
    for log in (home / "logs").rglob("*"):
        if log.is_file():
            text = log.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"a secret in {log}"
    for log in (home / "airflow" / "logs").rglob("*"):
        if log.is_file():
            assert not any(s in log.read_text(errors="replace") for s in secrets), f"a secret in {log}"


def test_every_port_is_on_the_stack_host(stack) -> None:
    _, env, rows = stack
    listening = []
    for proc in _tree(rows):
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(proc.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening, "no listening socket found"
    wild = [entry for entry in listening if entry[1] not in ("127.0.0.1", "::1")]
    assert wild == [], f"listening beyond SCLAKE_STACK_HOST (127.0.0.1): {wild}"
