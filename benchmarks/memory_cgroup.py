"""A memory cgroup to run commands under a hard memory limit (the kernel kills what goes beyond it).

The v1 ``memory`` controller is used when it is mounted (``/sys/fs/cgroup/memory``), else
cgroup v2 (a ``memory.max`` under ``/sys/fs/cgroup``, with the ``memory`` controller enabled
for the children of the root). Needs root. A command runs inside it through a shell that
moves itself into the group and then ``exec``s the command, so that the command and all its
children (Dask workers, fork servers) are charged to it and nothing else is.

Memory charged to a cgroup includes the page cache of the files its processes read and
write; the kernel reclaims that cache before it kills anything, so the limit bounds what the
processes themselves hold, and :meth:`MemoryCgroup.peak` (cache included) is an upper bound.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from pipelines.profiles import parse_bytes

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")

__all__ = ["MemoryCgroup", "available", "parse_bytes"]


def _version() -> int | None:
    if (V1_ROOT / "memory.limit_in_bytes").exists() or (V1_ROOT / "cgroup.procs").exists():
        return 1
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return 2
    return None


def available() -> str | None:
    """Why no memory cgroup can be made here (``None`` when one can)."""
    version = _version()
    if version is None:
        return "no cgroup memory controller is mounted"
    root = V1_ROOT if version == 1 else V2_ROOT
    probe = root / f"sclake-probe-{time.monotonic_ns()}"
    try:
        probe.mkdir()
    except OSError as e:
        return f"cannot create a cgroup under {str(root)!r} ({e.strerror}); run as root"
    probe.rmdir()
    return None


class MemoryCgroup:
    """A cgroup named ``name`` with a memory limit of ``limit`` bytes; removed on :meth:`remove`/exit.

    Parameters
    ----------
    name : str
    limit : int
        Bytes; swap is capped at the same value where the kernel accounts it (v1 ``memsw``,
        v2 ``memory.swap.max`` = 0), so that nothing escapes to swap.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.version = _version()
        if self.version is None:
            raise RuntimeError("no cgroup memory controller is mounted (need v1 'memory' or v2 with 'memory')")
        self.limit = int(limit)
        self.path = (V1_ROOT if self.version == 1 else V2_ROOT) / name
        self.path.mkdir(exist_ok=True)
        if self.version == 1:
            self._write("memory.limit_in_bytes", self.limit)
            with contextlib.suppress(OSError):  # absent without swap accounting
                self._write("memory.memsw.limit_in_bytes", self.limit)
        else:
            self._write("memory.max", self.limit)
            with contextlib.suppress(OSError):
                self._write("memory.swap.max", 0)

    def _write(self, name: str, value: object) -> None:
        (self.path / name).write_text(f"{value}\n")

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def describe(self) -> str:
        return f"cgroup v{self.version} {self.path}, limit {self.limit:,} bytes"

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the group: a shell joins it, then becomes the command."""
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *cmd]

    def reset(self) -> None:
        """Start a new peak (v1: ``memory.max_usage_in_bytes``; v2 keeps ``memory.peak`` per group, unresettable
        on older kernels)."""
        if self.version == 1:
            self._write("memory.max_usage_in_bytes", 0)
        else:
            with contextlib.suppress(OSError):
                self._write("memory.peak", 0)

    def peak(self) -> int:
        """Largest memory charged to the group since :meth:`reset` (page cache included)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(self._read(name).split()[0])
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        """Processes of the group the kernel killed for memory so far."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in self._read(name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def run(self, cmd: list[str], *, env: dict[str, str], cwd: Path) -> tuple[Any, dict[str, Any]]:
        """Run ``cmd`` inside the group from a new peak, measured (``benchmarks/common.run_measured``):
        the measurement and the figures every capped step reports (the group's peak, its OOM kills
        during the command, the load average around it)."""
        from benchmarks.common import run_measured

        self.reset()
        kills, load_before = self.oom_kills(), os.getloadavg()
        m = run_measured(self.wrap(cmd), env=env, cwd=cwd)
        return m, {
            "returncode": m.returncode,
            "seconds": round(m.seconds, 2),
            "peak_rss_tree_bytes": m.peak_rss_tree_bytes,
            "peak_rss_process_bytes": m.peak_rss_process_bytes,
            "cgroup_peak_bytes": self.peak(),
            "oom_kills": self.oom_kills() - kills,
            "cpu_seconds": round(m.cpu_seconds, 1),
            "processes": m.processes_seen,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        }

    def remove(self) -> None:
        """Remove the group (waits a little for exiting processes to leave it)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
