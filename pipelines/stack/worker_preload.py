"""Preloaded by the embedded stack's Dask workers (``dask worker --preload``): the task modules, once.

Each worker imports the modules its tasks use when it starts, so that the first task of a step
runs without imports. A module that fails to import is logged and skipped rather than raised:
the worker starts anyway, and a task that needs the module fails with the import error in its
step's log (as it would on a local cluster), instead of the whole stack refusing to start.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from pipelines.dask_cluster import INGEST_MODULES

# The modules of every step's tasks: conversion, validation's summaries, tokens, the engine (and torch).
MODULES = (
    *INGEST_MODULES,
    "pipelines.validate.run",
    "pipelines.embed.tokens",
    "pipelines.embed.engine",
    "pipelines.embed.encoder",
)
log = logging.getLogger(__name__)


def dask_setup(worker: Any = None) -> None:
    """Import :data:`MODULES` (Dask calls this once per worker)."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the worker's entry point: a failing module is its task's error
            log.warning("preloading %s failed (%s: %s); tasks that use it will fail with it", name, type(e).__name__, e)
