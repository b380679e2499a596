"""Remote sources: h5py reads S3 objects in its own thread, byte-exact, and never waits on an I/O thread."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.ingest.remote import ObjectChanged, S3RangeFile, S3Stream, split_s3_url
from pipelines.ingest.source import inspect_source, open_h5, read_csr_rows
from pipelines.lake import Lake
from pipelines.sample import write_sample
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_object(settings_s3: Settings, tmp_path: Path) -> tuple[Lake, str, bytes]:
    lake = Lake(settings_s3)
    data = np.random.default_rng(3).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    lake.put(tmp_path / "blob", "incoming/blob.bin")
    return lake, lake.url("incoming/blob.bin"), data


def test_reads_are_byte_exact_with_read_ahead(s3_object) -> None:
    lake, url, data = s3_object
    f = S3RangeFile(url, lake.storage_options, block_size=64 * 1024)
    assert f.size == len(data) and f.seekable() and f.readable()
    rng = np.random.default_rng(0)
    for _ in range(200):
        start = int(rng.integers(0, len(data)))
        n = int(rng.integers(0, 20_000))
        assert f.seek(start) == start
        assert f.read(n) == data[start : start + n]
        assert f.tell() == min(start + n, len(data))
    f.seek(-10, io.SEEK_END)
    assert f.read() == data[-10:] and f.read(5) == b""
    f.seek(0)
    f.seek(100, io.SEEK_CUR)
    assert f.read(3) == data[100:103]
    # Small sequential reads come from the read-ahead block: one request per block.
    g = S3RangeFile(url, lake.storage_options, block_size=64 * 1024)
    chunks = [g.read(512) for _ in range(len(data) // 512 + 1)]
    assert b"".join(chunks) == data
    assert g.requests == pytest.approx(len(data) / (64 * 1024 + 512), abs=1)


def test_missing_object_and_bad_urls(settings_s3: Settings) -> None:
    lake = Lake(settings_s3)
    with pytest.raises(FileNotFoundError):
        S3RangeFile(lake.url("incoming/none.h5ad"), lake.storage_options, block_size=1024)
    assert split_s3_url("s3://b/k/x.h5ad") == ("b", "k/x.h5ad")
    with pytest.raises(Exception, match="not an s3://bucket/key"):
        split_s3_url("s3://bucket-only")


def test_h5ad_reads_go_on_while_the_io_threads_are_stalled(settings_s3: Settings, tmp_path: Path) -> None:
    """The deadlock this reader exists for: h5py holds its lock during a file object's read, and
    freeing an h5py object needs that lock, so a garbage collection on fsspec's or zarr's I/O
    thread stalls that thread for as long as a read lasts. Reads that waited on those threads
    would never finish; ours must finish while both are stalled."""
    import fsspec.asyn
    import zarr.core.sync

    lake = Lake(settings_s3)
    path = write_sample(tmp_path / "x.h5ad", cells=300, genes=400, seed=5)
    lake.put(path, "incoming/x.h5ad")
    url = lake.url("incoming/x.h5ad")
    release = threading.Event()
    stalled = []
    for loop in (fsspec.asyn.get_loop(), zarr.core.sync._get_loop()):
        entered = threading.Event()

        def stall(entered=entered) -> None:
            entered.set()
            release.wait(60)

        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)  # the loop runs
        loop.call_soon_threadsafe(stall)
        assert entered.wait(10)
        stalled.append(loop)

    def read() -> sp.csr_matrix:
        spec = inspect_source(url, lake.storage_options)
        with open_h5(url, lake.storage_options) as f:
            return read_csr_rows(f, spec, 0, spec.n_obs)

    try:
        with ThreadPoolExecutor(2) as pool:
            results = [fut.result(timeout=40) for fut in [pool.submit(read), pool.submit(read)]]
    finally:
        release.set()
    import anndata as ad

    x = sp.csr_matrix(ad.read_h5ad(path).X)
    for got in results:
        assert (got != x).nnz == 0


def test_an_object_replaced_during_the_read_is_an_error(s3_object, tmp_path: Path) -> None:
    lake, url, data = s3_object
    f = S3RangeFile(url, lake.storage_options, block_size=1024)
    assert f.read(10) == data[:10]
    (tmp_path / "other").write_bytes(data[::-1])
    lake.put(tmp_path / "other", "incoming/blob.bin")
    f.seek(200_000)
    with pytest.raises(OSError, match="changed while it was being read"):
        f.read(10)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sclake-s3-stream")]


def test_stream_reads_the_object_front_to_back_ahead_of_the_caller(s3_object, tmp_path: Path) -> None:
    lake, url, data = s3_object
    for streams in (1, 2, 3):
        with S3Stream(url, lake.storage_options, block_size=16 * 1024, ahead=2, streams=streams) as f:
            blocks = list(iter(f.read, b""))
            assert f.read() == b""  # and stays at the end
        assert b"".join(blocks) == data
        assert all(len(b) == 16 * 1024 for b in blocks[:-1])
    # A block that ends exactly at the end of the object, and one block larger than the object.
    for block in (len(data) // 4, 2 * len(data)):
        with S3Stream(url, lake.storage_options, block_size=block, ahead=3) as f:
            assert b"".join(iter(f.read, b"")) == data
    # An empty object: no block at all.
    (tmp_path / "empty").write_bytes(b"")
    lake.put(tmp_path / "empty", "incoming/empty.bin")
    with S3Stream(lake.url("incoming/empty.bin"), lake.storage_options, block_size=1024, ahead=2) as f:
        assert f.read() == b""
    # Closed before the end, its threads stop (no more than `ahead` blocks were asked for).
    f = S3Stream(url, lake.storage_options, block_size=1024, ahead=1)
    assert f.read() == data[:1024]
    f.close()
    assert not _stream_threads()
    with (
        pytest.raises(FileNotFoundError),
        S3Stream(lake.url("incoming/none"), lake.storage_options, block_size=1024, ahead=1) as g,
    ):
        g.read()


def test_stream_refuses_an_object_that_is_not_the_one_hashed(s3_object, tmp_path: Path) -> None:
    lake, url, data = s3_object
    etag = lake.etag(lake.path("incoming/blob.bin"))
    (tmp_path / "other").write_bytes(data[::-1])
    lake.put(tmp_path / "other", "incoming/blob.bin")
    with pytest.raises(ObjectChanged), S3Stream(url, lake.storage_options, block_size=1024, ahead=1, etag=etag) as f:
        f.read()
    # Without an ETag given, the stream keeps to the one its first request found: an object
    # replaced between two blocks is an error, not a mix of the two versions.
    (tmp_path / "first").write_bytes(data)
    got = []
    with pytest.raises(ObjectChanged), S3Stream(url, lake.storage_options, block_size=1024, ahead=1) as f:
        got.append(f.read())  # of the reversed bytes, in the store now
        lake.put(tmp_path / "first", "incoming/blob.bin")
        while block := f.read():
            got.append(block)
    assert got[0] == data[::-1][:1024] and len(got) < len(data) // 1024


class CuttingProxy:
    """A TCP proxy to the S3 server that cuts its first ``cuts`` connections after ``after``
    bytes from the server: a GET that breaks off in the middle of the object."""

    def __init__(self, port: int, *, after: int, cuts: int) -> None:
        self.port, self.after, self.cuts = port, after, cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections <= self.cuts
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.after if cut else None), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_stream_asks_again_for_a_block_whose_get_broke_off(s3_object) -> None:
    lake, url, data = s3_object
    endpoint = lake.storage_options["endpoint_url"]
    port = int(endpoint.rsplit(":", 1)[1].strip("/"))
    proxy = CuttingProxy(port, after=100_000, cuts=2)
    options = {**lake.storage_options, "endpoint_url": f"http://127.0.0.1:{proxy.address[1]}"}
    etag = lake.etag(lake.path("incoming/blob.bin"))
    with S3Stream(url, options, block_size=8 * 1024, ahead=2, etag=etag) as f:
        assert b"".join(iter(f.read, b"")) == data
    assert proxy.connections >= 3  # two broken GETs, asked again on other connections
    proxy.listener.close()
    # More breaks than it resumes after: an error, not a short object.
    proxy = CuttingProxy(port, after=50_000, cuts=100)
    options = {**lake.storage_options, "endpoint_url": f"http://127.0.0.1:{proxy.address[1]}"}
    with pytest.raises(OSError, match="cannot read"), S3Stream(url, options, block_size=8 * 1024, ahead=2) as f:
        while f.read():
            pass
    proxy.listener.close()
