"""Resource usage of one step run: CPU seconds, peak resident memory and peak GPU memory.

The process and all its descendants are measured (Dask's local workers, Airflow's task
subprocesses): CPU time is the difference of the family's CPU time between start and
end (a child that exited and was reaped is still counted through its parent's
``children_*`` times); peak RSS is the largest sum of resident memory seen by a sampling
thread, and never less than the process's own high-water mark since the start (Linux
``VmHWM``, reset at the start through ``/proc/self/clear_refs``). GPU memory is torch's
peak allocation, read only when torch is already imported and CUDA initialised (this
module never imports torch).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import asdict, dataclass

import psutil

SAMPLE_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Usage:
    """What one run used. ``gpu_peak_bytes`` is ``None`` when CUDA was not used."""

    cpu_seconds: float
    peak_rss_bytes: int
    gpu_peak_bytes: int | None

    def as_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _family(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _cpu_total(proc: psutil.Process) -> float:
    total = 0.0
    for p in _family(proc):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _rss_total(proc: psutil.Process) -> int:
    total = 0
    for p in _family(proc):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _self_hwm_bytes() -> int | None:
    """The process's resident high-water mark (``VmHWM``), Linux only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_self_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size only
        return True
    except OSError:
        return False


def _cuda():
    """torch.cuda when torch is loaded and CUDA initialised, else ``None``."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    except Exception:  # noqa: BLE001 - a broken CUDA set-up must not fail a step
        return None


class ResourceMonitor:
    """Measures a block: ``start()``, do the work, ``stop()`` returns a :class:`Usage`."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.proc = psutil.Process(os.getpid())
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0
        self._hwm_reset = False

    def start(self) -> None:
        self._cpu0 = _cpu_total(self.proc)
        self._hwm_reset = _reset_self_hwm()
        self._peak = _rss_total(self.proc)
        cuda = _cuda()
        if cuda is not None:
            with contextlib.suppress(Exception):
                for d in range(cuda.device_count()):
                    cuda.reset_peak_memory_stats(d)
        self._thread = threading.Thread(target=self._sample, name="sclake-usage", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_total(self.proc))

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        peak = max(self._peak, _rss_total(self.proc))
        hwm = _self_hwm_bytes() if self._hwm_reset else None
        if hwm is not None:
            peak = max(peak, hwm)
        return Usage(
            cpu_seconds=max(0.0, _cpu_total(self.proc) - self._cpu0),
            peak_rss_bytes=int(peak),
            gpu_peak_bytes=_gpu_peak(),
        )


def _gpu_peak() -> int | None:
    cuda = _cuda()
    if cuda is None:
        return None
    try:
        return int(max(cuda.max_memory_allocated(d) for d in range(cuda.device_count())))
    except Exception:  # noqa: BLE001 - see _cuda
        return None
