"""Background services with pid files, health checks and process-group shutdown."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.logs import get_logger

log = get_logger(__name__)


def venv_binary(name: str) -> str | None:
    """A console script of this environment (next to the interpreter), else one on ``PATH``."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else shutil.which(name)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local health URL
            return 200 <= r.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Service:
    """One background process of the embedded stack.

    ``argv[0]`` may be ``None`` when the binary is not installed: the service is then
    reported as unavailable (``optional`` services) or fails ``up`` with a clear message.
    ``port`` is ``None`` for a service that listens on no fixed port (Dask workers);
    ``link`` is the address shown for it when ``http://host:port`` is not the one to open;
    ``health`` replaces the default check (``health_url``, else the port accepting connections);
    ``more_ports`` are further ports it listens on, each with the setting that moves it (a
    taken one fails ``up`` before the start: its health check would ask the other process).
    """

    name: str
    argv: list[str | None]
    host: str
    port: int | None
    health_url: str | None = None
    link: str | None = None
    health: Callable[[], bool] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    optional: bool = False
    startup_timeout: float = 60.0
    prepare: Callable[[], None] | None = None
    after_start: Callable[[], None] | None = None
    install_hint: str = ""
    more_ports: dict[int, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.argv[0] is not None

    @property
    def url(self) -> str:
        return self.link or f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        if self.health is not None:
            return self.health()
        if self.health_url:
            return http_ok(self.health_url)
        return self.port is not None and port_open(self.host, self.port)


class ProcessManager:
    """Starts and stops services; state lives in ``<home>/run`` (pid files) and ``<home>/logs``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.log_dir = home / "logs"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def started_file(self) -> Path:
        """Names of the services the last ``stack up`` started (cleared by ``stack down``)."""
        return self.run_dir / "started"

    def started(self) -> set[str]:
        try:
            return set(self.started_file.read_text().split())
        except FileNotFoundError:
            return set()

    def record_started(self, name: str) -> None:
        names = self.started() | {name}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_file.write_text("\n".join(sorted(names)) + "\n")

    def forget_started(self) -> None:
        self.started_file.unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        """The pid of a running service started by us, else ``None`` (stale pid files are removed)."""
        path = self.pid_file(name)
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            path.unlink(missing_ok=True)
            return None
        return pid

    def start(self, svc: Service) -> str:
        """Start ``svc`` unless it already runs; wait until healthy. Returns what happened."""
        if not svc.available:
            if svc.optional:
                return "not installed"
            raise ConfigError(f"{svc.name}: its program is not installed. {svc.install_hint}".strip())
        if self.pid(svc.name) is not None:
            if self._wait_healthy(svc, self.pid(svc.name), timeout=svc.startup_timeout):
                return "already running"
            raise ConfigError(
                f"{svc.name} runs (pid {self.pid(svc.name)}) but is not healthy; see {self.log_file(svc.name)}"
            )
        ports = dict(svc.more_ports)
        if svc.port is not None:
            ports[svc.port] = f"SCLAKE_STACK_{svc.name.upper().replace('-', '_')}_PORT"
        for port, setting in ports.items():
            if port_open(svc.host, port):
                raise ConfigError(
                    f"{svc.name}: port {port} on {svc.host} is taken by another process; stop it or set "
                    f"{setting} to a free port"
                )
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if svc.prepare:
            svc.prepare()
        env = {**os.environ, **svc.env}
        # The environment's bin/ first: services spawn console scripts of their own.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Private files: a service's log, and what it writes (databases, generated passwords),
        # are for the user who runs the stack only (umask 077 in the service's processes).
        log_fd = os.open(self.log_file(svc.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(log_fd, 0o600)
        with os.fdopen(log_fd, "ab") as logf:
            proc = subprocess.Popen(
                [str(a) for a in svc.argv],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=svc.cwd,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
                umask=0o077,
            )
        self.pid_file(svc.name).write_text(str(proc.pid))
        if not self._wait_healthy(svc, proc.pid, timeout=svc.startup_timeout):
            tail = self.tail(svc.name)
            self.stop(svc.name)
            raise ConfigError(f"{svc.name} did not become healthy within {svc.startup_timeout:.0f}s; log tail:\n{tail}")
        if svc.after_start:
            svc.after_start()
        return "started"

    def _wait_healthy(self, svc: Service, pid: int | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if svc.healthy():
                return True
            if pid is not None and not _alive(pid):
                return False
            time.sleep(0.3)
        return False

    def stop(self, name: str, timeout: float = 20.0) -> bool:
        """Stop a service's whole process group. Returns whether something was running."""
        pid = self.pid(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.2)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, IndexError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _is_zombie(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is still alive (zombies excluded)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
