"""Logging set-up and progress lines (cells done, rate) for long steps."""

from __future__ import annotations

import logging
import sys
import time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set by the CLI without -v: Dask workers this process starts log nothing below CRITICAL
# (their "Compute Failed" dumps), so a failure reaches the user as the command's one line.
QUIET_WORKERS = False


def setup_logging(level: str | int = "INFO", *, stream: bool = True) -> None:
    """Configure the ``sclake`` loggers once (idempotent); quiet chatty libraries.

    ``stream=False`` sets the levels only, for a host that handles log records itself (an
    Airflow task: a second handler on stderr would log every line again, as an error).
    """
    root = logging.getLogger()
    if stream and not any(getattr(h, "_sclake", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._sclake = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("sclake").setLevel(level)
    logging.getLogger("pipelines").setLevel(level)


def get_logger(name: str) -> logging.Logger:
    """A logger under ``sclake.`` (``get_logger(__name__)`` in modules)."""
    return logging.getLogger(name if name.startswith(("sclake", "pipelines")) else f"sclake.{name}")


class Progress:
    """Logs ``<what>: done/total (pct) rate/s`` at most every ``interval`` seconds and at the end.

    Example
    -------
    >>> p = Progress("ingest", total=n_cells, unit="cells")
    >>> p.advance(4096)
    >>> p.finish()
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "cells",
        *,
        logger: logging.Logger | None = None,
        interval: float = 5.0,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.logger = logger or get_logger("sclake.progress")
        self.interval = interval
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        total = f"/{self.total:,}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.what}: {self.done:,}{total} {self.unit}{pct}, {self.rate:,.1f} {self.unit}/s"

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.logger.info(self.line())

    def finish(self) -> float:
        """Log the final line; returns the rate."""
        self.logger.info(self.line() + f" in {self.elapsed:.1f}s")
        return self.rate
