"""Dask worker plugins the steps register on the local clusters they start (:mod:`pipelines.dask_cluster`)."""

from __future__ import annotations

import logging

from distributed import WorkerPlugin


class QuietAsyncio(WorkerPlugin):
    """For the CLI without -v: the worker's asyncio logger logs only CRITICAL.

    An S3 server that goes away mid-write leaves aiohttp requests whose exceptions nobody
    retrieves; asyncio would print each one, with its traceback, on the stderr the worker
    shares with the command, beside the command's own one-line error (shown with -v).
    """

    name = "sclake-quiet-asyncio"

    def setup(self, worker: object) -> None:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
