"""Small helpers shared by the benchmark scripts: measured child processes and JSON results.

Peak memory of a command is measured over its whole process tree: a sampling thread sums
the resident set size (RSS) of the child and all its descendants (Dask workers and
nannies included) every ``interval`` seconds and keeps the largest sum, and also the
largest single process. Summed RSS counts shared pages (libraries) once per process, so
it is an upper bound of the memory the tree really holds; a peak shorter than the
sampling interval can be missed (the child's own kernel high-water mark, read from
``/proc`` while it runs, is kept as a floor for its share). CPU seconds: the sum over
every process of the tree of its user + system time at its last sample (a process's last
``interval`` can be missed).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Measured:
    """One measured run of a command."""

    cmd: list[str]
    returncode: int
    seconds: float
    peak_rss_tree_bytes: int  # largest sum of RSS over the process tree
    peak_rss_process_bytes: int  # largest RSS of a single process of the tree
    cpu_seconds: float  # user + system CPU of the whole tree (each process's last sample)
    processes_seen: int
    stdout: str
    stderr: str
    # (seconds since the start, RSS of the process tree) about once a second
    rss_timeline: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stdout")
        d.pop("rss_timeline")
        d["stderr_tail"] = d.pop("stderr")[-2000:]
        return d


def _hwm_bytes(pid: int) -> int:
    """The kernel's RSS high-water mark of one process (``VmHWM``), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None, interval: float = 0.05
) -> Measured:
    """Run ``cmd`` to completion, sampling the RSS of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = {"tree": 0, "one": 0, "root_hwm": 0}
    seen: set[int] = set()
    cpu: dict[int, float] = {}  # pid -> user + system seconds at its last sample
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                family = []
            total = 0
            for p in family:
                try:
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                cpu[p.pid] = t.user + t.system
                seen.add(p.pid)
                total += rss
                peak["one"] = max(peak["one"], rss)
            peak["tree"] = max(peak["tree"], total)
            now = time.perf_counter() - start
            if not timeline or now - timeline[-1][0] >= 1.0:
                timeline.append((round(now, 2), total))
            peak["root_hwm"] = max(peak["root_hwm"], _hwm_bytes(proc.pid))
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    return Measured(
        cmd=cmd,
        returncode=proc.returncode,
        seconds=seconds,
        peak_rss_tree_bytes=max(peak["tree"], peak["root_hwm"]),
        peak_rss_process_bytes=max(peak["one"], peak["root_hwm"]),
        cpu_seconds=sum(cpu.values()),
        processes_seen=len(seen),
        stdout=out,
        stderr=err,
        rss_timeline=timeline,
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": commit.strip(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` (machine info added) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
