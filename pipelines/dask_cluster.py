"""The Dask client the steps compute with: a local cluster of worker processes, or a remote one.

``SCLAKE_DASK_ADDRESS`` empty: a ``LocalCluster`` of ``SCLAKE_DASK_WORKERS`` worker
processes, one thread each (the tasks are CPU-bound NumPy/codec work and HDF5 reads,
which hold the GIL in places), each with a memory limit of
``SCLAKE_DASK_WORKER_MEMORY`` (the nanny restarts a worker that goes beyond it), no
dashboard, quiet logs. Set (``sclake stack up`` sets it to the embedded stack's scheduler,
:mod:`pipelines.stack.dask`): a ``Client`` connected to that scheduler, whose workers run
with the same :data:`WORKER_CONFIG` and share nothing with the caller but the lake: every
task gets its settings and URIs as arguments.

Workers are forked from a fork server that has imported the task modules once. A step
can start that server first thing (:func:`start_fork_server`), so that its imports run
on another core while the step imports its own modules and hashes its input.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError
from pipelines.logs import get_logger
from pipelines.settings import Settings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from distributed import Client

log = get_logger(__name__)

BASE_PRELOAD = ("distributed", "numpy", "pandas", "scipy.sparse")  # the fork server imports them once
INGEST_MODULES = ("h5py", "zarr", "anndata", "pipelines.ingest.convert")  # what the ingest tasks import
# What tasks import to reach an S3 lake (s3fs, aiobotocore, botocore: about half a second per
# worker), preloaded by the fork server where the lake is on S3.
S3_MODULES = ("s3fs",)
# Worker environment. Dask's default MALLOC_TRIM_THRESHOLD_=65536 pins glibc's mmap threshold,
# so every block-sized NumPy buffer is a fresh mmap whose pages are faulted in and zeroed again:
# the conversion tasks, which allocate and free such buffers all the time, ran 35% slower with
# it. The worker memory limit (the nanny) still bounds what a worker holds.
WORKER_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": None}
# How every sclake worker runs, local or in the embedded stack (pipelines.stack.dask): spilling to
# disk would only hide a task that holds too much, so the nanny restarts it instead.
WORKER_CONFIG = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": 0.9,
    "distributed.worker.memory.terminate": 0.98,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.daemon": True,
    "distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
}
QUIET_LOGGERS = ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny", "tornado")


def worker_config_environ() -> dict[str, str]:
    """:data:`WORKER_CONFIG` as ``DASK_*`` environment variables, for workers started as programs
    (Dask reads each value with ``ast.literal_eval``, hence ``repr``)."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): repr(v) for key, v in WORKER_CONFIG.items()}


def _worker_log_level() -> int:
    """Level of the workers' own log lines: ERROR ("Compute Failed" dumps reach task logs), or
    CRITICAL for the CLI without -v (:data:`pipelines.logs.QUIET_WORKERS`)."""
    from pipelines import logs

    return logging.CRITICAL if logs.QUIET_WORKERS else logging.ERROR


@contextlib.contextmanager
def _spawnable_main() -> Iterator[None]:
    """Keep spawned worker processes from re-running the host program's ``__main__`` script.

    Python's ``spawn`` start method runs the parent's main script again in every child. Inside
    an Airflow task that script is the ``airflow`` command, which refuses to start without the
    metadata database a task may not reach; the workers need none of it.
    """
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


@contextlib.contextmanager
def dask_client(settings: Settings, *, preload: Sequence[str] = ()) -> Iterator[Client]:
    """Yield a Dask ``Client`` per the settings; the local cluster is closed on exit.

    Local workers are forked from a fork server that imported ``BASE_PRELOAD`` and
    ``preload`` (module names) once, so that they start in a fraction of the time a fresh
    interpreter takes and run their first task without importing anything.

    Raises
    ------
    ConfigError
        When ``settings.dask_address`` is set but no scheduler answers there.
    """
    import dask
    from distributed import Client, LocalCluster

    from pipelines import logs

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
    _claim_mp_context()
    start_fork_server(settings, preload=preload)
    with dask.config.set({**WORKER_CONFIG, "distributed.worker.multiprocessing-method": "forkserver"}):
        with _spawnable_main():
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
                silence_logs=_worker_log_level(),
            )
        # Not entered as a context manager and not the default client: the client may be
        # started in one thread and closed in another (BackgroundClient).
        client = Client(cluster, set_as_default=False)
        try:
            if logs.QUIET_WORKERS:
                from pipelines.worker_plugins import QuietAsyncio

                client.register_plugin(QuietAsyncio())
            log.debug(
                "local Dask cluster: %d workers x 1 thread, %s each", settings.dask_workers, settings.dask_worker_memory
            )
            yield client
        finally:
            client.close()
            cluster.close()


@contextlib.contextmanager
def cluster_or_threads(
    settings: Settings, client: Client | None = None, *, parts: int | None = None
) -> Iterator[Client | None]:
    """The client a step's parts go to: ``client`` when given, else one connected to the cluster at
    ``SCLAKE_DASK_ADDRESS`` when it is set (closed on exit), else None: the step works in its own
    threads, with no cluster to start (validation and tokenization, whose parts are light).

    With ``parts`` (the number of parts to do), the cluster is used only for more parts than the
    step's own threads take at once (:func:`pipelines.part_blocks.parallel_parts`): for fewer,
    connecting (about a second) would cost more than spreading them gains.
    """
    from pipelines.part_blocks import parallel_parts

    small = parts is not None and parts <= parallel_parts(settings)
    if client is not None or not settings.dask_address or small:
        yield client
        return
    with dask_client(settings) as remote:
        yield remote


def start_fork_server(settings: Settings, *, preload: Sequence[str] = ()) -> None:
    """Start the fork server local workers will be forked from, if a local cluster is to be used.

    Returns at once; the server imports ``BASE_PRELOAD`` and ``preload`` in its own process
    meanwhile. Idempotent, and a no-op with ``SCLAKE_DASK_ADDRESS`` set. Importing nothing
    heavy itself, it is meant to be called before the caller's own imports.
    """
    import multiprocessing
    from multiprocessing import forkserver

    if settings.dask_address:
        return
    ctx = multiprocessing.get_context("forkserver")
    lake_modules = S3_MODULES if settings.is_s3 else ()
    ctx.set_forkserver_preload(_preload_list([*preload, *lake_modules]))
    forkserver.ensure_running()


def _preload_list(preload: Sequence[str]) -> list[str]:
    # pipelines.fork_server comes last: its exit handler then runs first (atexit is LIFO).
    return list(dict.fromkeys([*BASE_PRELOAD, *preload, "pipelines.fork_server"]))


def _claim_mp_context() -> None:
    """Let distributed set its own fork-server preload list (it does so once, on first use), so
    that the list :func:`start_fork_server` sets afterwards is the one the server starts with."""
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context()


class BackgroundClient:
    """Starts :func:`dask_client` in a thread, so that the cluster boots while the caller works.

    ``get()`` waits for the client (re-raising a start failure); ``close()`` shuts it down.
    Use it as a context manager::

        with BackgroundClient(settings) as starting:
            copy_files()                 # meanwhile, worker processes start
            client = starting.get()
    """

    def __init__(self, settings: Settings, *, preload: Sequence[str] = ()) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._stack = contextlib.ExitStack()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sclake-dask-start")
        self._future = self._pool.submit(self._stack.enter_context, dask_client(settings, preload=preload))
        self._closing: Future[None] | None = None

    def get(self) -> Client:
        return self._future.result()

    def close_soon(self) -> None:
        """Start shutting the client (and a local cluster) down, in the background: the caller
        goes on with work that needs no cluster, and :meth:`close` waits for the end."""
        if self._closing is None:
            # In the thread that entered (its context variables hold the client's), after the
            # start: the pool has one thread. A failed start leaves nothing to close.
            self._closing = self._pool.submit(self._stack.close)

    def close(self) -> None:
        try:
            self.close_soon()
            self._closing.result()
        finally:
            self._pool.shutdown()

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
