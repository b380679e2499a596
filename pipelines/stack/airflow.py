"""Airflow standalone in the embedded stack: the project's DAGs, pools from the resource profiles.

``airflow standalone`` runs the API server, scheduler, DAG processor and triggerer with
a SQLite metadata database and the LocalExecutor under ``$SCLAKE_HOME/airflow``. Tasks
inherit ``SCLAKE_HOME``, so they read the stack's endpoints and credentials from
``stack.env`` like every ``sclake`` command.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.logs import get_logger
from pipelines.settings import Settings
from pipelines.stack.process import Service, venv_binary

log = get_logger(__name__)
ADMIN_USER = "admin"


def dags_folder() -> Path:
    """The project's ``dags/`` (next to the ``pipelines`` package in a source checkout)."""
    env = os.environ.get("SCLAKE_DAGS_FOLDER")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "dags"


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def _secrets(home: Path) -> dict[str, str]:
    """JWT secret shared by all Airflow components: generated once, kept private under AIRFLOW_HOME."""
    path = home / "sclake-secrets.json"
    if path.is_file():
        return json.loads(path.read_text())
    home.mkdir(parents=True, exist_ok=True)
    data = {"jwt_secret": secrets.token_urlsafe(48)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return data


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment of every Airflow process (and so of every task) in the embedded stack."""
    home = airflow_home(settings)
    url = f"http://{settings.stack_host}:{settings.stack_airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__HOST": settings.stack_host,
        "AIRFLOW__API__PORT": str(settings.stack_airflow_port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": _secrets(home)["jwt_secret"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1800",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # Log servers of the worker and triggerer: next to the API port, so two stacks can coexist.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.stack_airflow_port + 13),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.stack_airflow_port + 14),
        "SCLAKE_HOME": str(settings.home),
        "PYTHONPATH": str(dags_folder().parent),
        "NO_COLOR": "1",
    }


def pools(settings: Settings) -> dict[str, tuple[int, str]]:
    """Airflow pools the DAGs use: ingest is serialised; compute pools come from the profiles."""
    out = {
        "sclake_ingest": (1, "one ingestion at a time (each uses the whole Dask cluster)"),
        "sclake_validate": (1, "one validation at a time: a dataset id is validated, and announced, once"),
    }
    try:
        from pipelines.profiles import load_profiles
    except ImportError:
        return out
    for profile in load_profiles().values():
        slots = gpu_count() if profile.device_class == "gpu" else 1
        out.setdefault(profile.airflow_pool, (max(slots, 1), f"{profile.device_class} work from the resource profiles"))
    return out


def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def create_pools(settings: Settings) -> None:
    """Create (or resize) the pools with one ``airflow pools import`` (each CLI start costs seconds)."""
    env = {**os.environ, **airflow_env(settings)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    wanted = {
        name: {"slots": slots, "description": desc, "include_deferred": False}
        for name, (slots, desc) in pools(settings).items()
    }
    path = airflow_home(settings) / "sclake-pools.json"
    path.write_text(json.dumps(wanted, indent=2))
    r = subprocess.run(
        [venv_binary("airflow"), "pools", "import", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        raise ConfigError(f"could not create the Airflow pools {sorted(wanted)}: {r.stderr.strip()[-500:]}")
    for name, pool in wanted.items():
        log.info("airflow pool %s: %d slots", name, pool["slots"])


def airflow_services(settings: Settings) -> list[Service]:
    return [
        Service(
            name="airflow",
            # `airflow standalone` without the log servers (pipelines/stack/airflow_standalone.py)
            argv=[sys.executable, "-m", "pipelines.stack.airflow_standalone"],
            host=settings.stack_host,
            port=settings.stack_airflow_port,
            health_url=f"http://{settings.stack_host}:{settings.stack_airflow_port}/api/v2/monitor/health",
            env=airflow_env(settings),
            cwd=settings.home,
            prepare=lambda: ensure_private_state(settings),
            startup_timeout=420.0,
            after_start=lambda: create_pools(settings),
            install_hint="Install apache-airflow (a dependency of sclake: run `uv sync`).",
        )
    ]


PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def ensure_private_state(settings: Settings) -> None:
    """Before Airflow starts: its admin password generated here, in a 0600 file, and its database 0600.

    Airflow's simple auth manager generates a missing password and prints it to its log; a
    password already in the file is neither generated nor printed, so no log holds it.
    """
    home = airflow_home(settings)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / PASSWORDS_FILE
    try:
        passwords = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        passwords = {}
    if not passwords.get(ADMIN_USER):
        passwords[ADMIN_USER] = secrets.token_urlsafe(12)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(passwords) + "\n")
    for private in (path, home / "airflow.db", home / "sclake-secrets.json"):
        if private.exists():
            private.chmod(0o600)


def admin_password(settings: Settings) -> str | None:
    path = airflow_home(settings) / PASSWORDS_FILE
    try:
        return json.loads(path.read_text()).get(ADMIN_USER)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def airflow_notes(settings: Settings) -> list[str]:
    url = f"http://{settings.stack_host}:{settings.stack_airflow_port}"
    pw = admin_password(settings)
    return [
        f"Airflow UI:  {url}  (user {ADMIN_USER!r}, password {pw!r}; stored in "
        f"{airflow_home(settings) / PASSWORDS_FILE})"
    ]
