"""The Dask client the steps compute with: a local cluster of worker processes, or a remote one.

``SCLAKE_DASK_ADDRESS`` empty: a ``LocalCluster`` of ``SCLAKE_DASK_WORKERS`` worker
processes, one thread each (the tasks are CPU-bound NumPy/codec work and HDF5 reads,
which hold the GIL in places), each with a memory limit of
``SCLAKE_DASK_WORKER_MEMORY`` (the nanny restarts a worker that goes beyond it), no
dashboard, quiet logs. Set: a ``Client`` connected to that scheduler.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError
from pipelines.logs import get_logger
from pipelines.settings import Settings

if TYPE_CHECKING:
    from distributed import Client

log = get_logger(__name__)

QUIET_LOGGERS = ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny", "tornado")


@contextlib.contextmanager
def dask_client(settings: Settings) -> Iterator[Client]:
    """Yield a Dask ``Client`` per the settings; the local cluster is closed on exit.

    Raises
    ------
    ConfigError
        When ``settings.dask_address`` is set but no scheduler answers there.
    """
    import dask
    from distributed import Client, LocalCluster

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if settings.dask_address:
        try:
            client = Client(settings.dask_address, timeout="20s", set_as_default=False)
        except OSError as e:
            raise ConfigError(
                f"no Dask scheduler answers at SCLAKE_DASK_ADDRESS={settings.dask_address!r} ({e}); "
                "start one or unset SCLAKE_DASK_ADDRESS for a local cluster"
            ) from e
        try:
            yield client
        finally:
            client.close()
        return
    # Spilling to disk would only hide a task that holds too much; the nanny restarts it instead.
    with dask.config.set(
        {
            "distributed.worker.memory.target": False,
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": 0.9,
            "distributed.worker.memory.terminate": 0.98,
            "distributed.admin.system-monitor.gil.enabled": False,
            "distributed.worker.daemon": True,
        }
    ):
        cluster = LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=settings.dask_worker_memory,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            # No dashboard; the scheduler's health endpoints listen on a free local port.
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
        # Not entered as a context manager and not the default client: the client may be
        # started in one thread and closed in another (BackgroundClient).
        client = Client(cluster, set_as_default=False)
        try:
            log.debug(
                "local Dask cluster: %d workers x 1 thread, %s each", settings.dask_workers, settings.dask_worker_memory
            )
            yield client
        finally:
            client.close()
            cluster.close()


class BackgroundClient:
    """Starts :func:`dask_client` in a thread, so that the cluster boots while the caller works.

    ``get()`` waits for the client (re-raising a start failure); ``close()`` shuts it down.
    Use it as a context manager::

        with BackgroundClient(settings) as starting:
            copy_files()                 # meanwhile, worker processes start
            client = starting.get()
    """

    def __init__(self, settings: Settings) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._stack = contextlib.ExitStack()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sclake-dask-start")
        self._future = self._pool.submit(self._stack.enter_context, dask_client(settings))

    def get(self) -> Client:
        return self._future.result()

    def close(self) -> None:
        try:
            self._future.result()
        except Exception:  # noqa: BLE001 - a failed start has nothing to close; get() reported it
            pass
        finally:
            # Exit in the thread that entered: the client's context variables belong to it.
            self._pool.submit(self._stack.close).result()
            self._pool.shutdown()

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
