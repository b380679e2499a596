"""The local Dask cluster: what its fork server preloads, and shutting it down in the background."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

WORKER_MODULES = """
import sys
from pipelines.dask_cluster import INGEST_MODULES, dask_client
from pipelines.settings import Settings

settings = Settings(home=sys.argv[1], lake_uri=sys.argv[2], dask_workers=1)
with dask_client(settings, preload=INGEST_MODULES) as client:
    print(sorted(m for m in ("s3fs", "zarr") if client.run(lambda m=m: m in sys.modules).popitem()[1]))
"""


@pytest.mark.parametrize(
    ("lake_uri", "preloaded"),
    [("s3://lake/x", ["s3fs", "zarr"]), ("file:///tmp/sclake-lake-not-used", ["zarr"])],
)
def test_workers_start_with_the_modules_their_lake_needs(tmp_path, lake_uri, preloaded) -> None:
    """Workers fork from a server that imported the tasks' modules, and s3fs where the lake is
    on S3 (about half a second per worker otherwise, in the first task that writes there)."""
    out = subprocess.run(
        [sys.executable, "-c", WORKER_MODULES, str(tmp_path), lake_uri],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == repr(preloaded)


def test_background_client_closes_while_the_caller_goes_on(tmp_path) -> None:
    from pipelines.dask_cluster import BackgroundClient

    settings = Settings(home=tmp_path, lake_uri=f"file://{tmp_path / 'lake'}", dask_workers=1)
    with BackgroundClient(settings) as starting:
        client = starting.get()
        assert client.submit(sum, [1, 2]).result() == 3
        starting.close_soon()  # returns at once; the shutdown runs in the starter's thread
        starting.close_soon()  # asked twice: one shutdown
        starting.close()
        assert client.status == "closed"


def test_background_client_that_failed_to_start_closes_quietly(tmp_path, monkeypatch) -> None:
    import contextlib

    import pipelines.dask_cluster
    from pipelines.dask_cluster import BackgroundClient

    @contextlib.contextmanager
    def unreachable(settings, *, preload=()):
        raise ConfigError("no Dask scheduler answers at SCLAKE_DASK_ADDRESS='tcp://127.0.0.1:1'")
        yield

    monkeypatch.setattr(pipelines.dask_cluster, "dask_client", unreachable)
    starting = BackgroundClient(Settings(home=tmp_path))
    starting.close_soon()
    with pytest.raises(ConfigError, match="no Dask scheduler answers"):
        starting.get()
    starting.close()


UNRETRIEVED = """
import sys
from pipelines import logs
from pipelines.dask_cluster import dask_client
from pipelines.settings import Settings


def leave_an_unretrieved_exception():
    # What an S3 server dying mid-write leaves in a worker: an aiohttp task that failed and
    # that nobody awaits; asyncio logs it when the task is collected.
    import asyncio
    import gc

    async def write():
        raise ConnectionResetError("Cannot write to closing transport")

    loop = asyncio.new_event_loop()
    task = loop.create_task(write())
    loop.run_until_complete(asyncio.sleep(0.01))
    del task
    loop.close()
    gc.collect()


logs.QUIET_WORKERS = sys.argv[3] == "quiet"
with dask_client(Settings(home=sys.argv[1], lake_uri=sys.argv[2], dask_workers=1)) as client:
    client.submit(leave_an_unretrieved_exception, pure=False).result()
"""


@pytest.mark.parametrize(("mode", "printed"), [("quiet", False), ("verbose", True)])
def test_quiet_workers_leave_asyncio_unretrieved_exceptions_unprinted(tmp_path, mode, printed) -> None:
    """The CLI without -v: a worker's unretrieved asyncio exceptions do not reach the command's
    stderr beside its one-line error; with -v they still do."""
    out = subprocess.run(
        [sys.executable, "-c", UNRETRIEVED, str(tmp_path), (tmp_path / "lake").as_uri(), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert ("Task exception was never retrieved" in out.stderr) is printed, out.stderr
