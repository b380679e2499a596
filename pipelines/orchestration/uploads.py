"""Noticing uploads: a deferrable sensor whose trigger lists ``incoming/`` in the triggerer.

While it waits, the sensor holds no worker slot (it is deferred to the triggerer), and it
only ends when there is work (new ``.h5ad`` keys) or when its timeout passes, so a
continuously scheduled DAG does not flood the UI with skipped runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

UPLOAD_SUFFIXES = (".h5ad",)
# What was said about files under incoming/ that are not ingested, so each is logged once.
SKIPPED_REPORT = "reports/incoming-skipped.json"


def skip_reason(key: str) -> str | None:
    """Why a file under ``incoming/`` is not ingested, or ``None`` for an upload.

    The rule: ``*.h5ad`` files (any case, any sub-folder) are uploads, except hidden ones
    (a name or folder starting with ``.``), which upload tools use for partial files.
    """
    name = key.rsplit("/", 1)[-1]
    if any(part.startswith(".") for part in key.split("/")):
        return "hidden (a name or folder starting with '.' is a partial or hidden upload): rename it to ingest it"
    if not name.lower().endswith(UPLOAD_SUFFIXES):
        return "not an .h5ad file: only *.h5ad files are ingested"
    return None


def scan_incoming(lake) -> tuple[list[str], dict[str, str]]:
    """``(uploads, skipped)`` under ``incoming/``: the keys to ingest and, for the others, why not."""
    from pipelines.lake import PATHS

    uploads, skipped = [], {}
    for key in lake.ls(PATHS.incoming, recursive=True, hidden=True):
        reason = skip_reason(key)
        if reason is None:
            uploads.append(key)
        else:
            skipped[key] = reason
    return uploads, skipped


def report_skipped(lake, skipped: dict[str, str]) -> list[str]:
    """Log each skipped file once (kept in ``reports/incoming-skipped.json``); returns the newly reported keys."""
    from pipelines.logs import get_logger

    try:
        known = lake.read_json(SKIPPED_REPORT) if lake.exists(SKIPPED_REPORT) else {}
    except (OSError, ValueError):
        known = {}
    new = [k for k in skipped if k not in known]
    for key in new:
        get_logger(__name__).warning("not ingesting %s: %s", lake.url(key), skipped[key])
    current = {k: known.get(k, v) for k, v in skipped.items()}
    if current != known:
        lake.write_json(SKIPPED_REPORT, current)
    return new


def list_uploads(settings=None) -> list[str]:
    """Relative keys of the uploads waiting under ``incoming/`` (any sub-folder), oldest name first.

    Other files there are reported once each (:func:`report_skipped`) and left alone.
    """
    from pipelines.lake import Lake
    from pipelines.settings import load_settings

    lake = Lake(settings or load_settings(cwd_env=False))
    uploads, skipped = scan_incoming(lake)
    report_skipped(lake, skipped)
    return uploads


class UploadsTrigger(BaseTrigger):
    """Fires with the waiting upload keys as soon as ``incoming/`` holds any; ``[]`` after ``timeout``."""

    def __init__(self, poke_interval: float = 30.0, timeout: float = 3600.0) -> None:
        super().__init__()
        self.poke_interval = poke_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"poke_interval": self.poke_interval, "timeout": self.timeout},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        while True:
            keys = await asyncio.to_thread(list_uploads)
            if keys:
                yield TriggerEvent({"keys": keys})
                return
            if time.monotonic() >= deadline:
                yield TriggerEvent({"keys": []})
                return
            await asyncio.sleep(min(self.poke_interval, max(deadline - time.monotonic(), 0.1)))


class UploadsSensor(BaseSensorOperator):
    """Waits (deferred) for uploads under ``incoming/``; returns their keys, or skips after ``timeout``."""

    def __init__(self, *, poke_interval: float = 30.0, timeout: float = 3600.0, **kwargs: Any) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, soft_fail=True, **kwargs)

    def poke(self, context: Any) -> Any:  # used only when run without deferral
        from airflow.sdk import PokeReturnValue

        keys = list_uploads()
        return PokeReturnValue(is_done=bool(keys), xcom_value=keys)

    def execute(self, context: Any) -> Any:
        keys = list_uploads()
        if keys:
            return keys
        self.defer(
            trigger=UploadsTrigger(poke_interval=self.poke_interval, timeout=float(self.timeout)),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException

        keys = (event or {}).get("keys") or []
        if not keys:
            raise AirflowSkipException("no uploads arrived before the sensor's timeout")
        return keys
