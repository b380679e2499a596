"""Remote ``.h5ad`` sources read by h5py in the calling thread.

h5py holds a process-wide lock while it calls a Python file object's ``readinto``, and
takes the same lock to free any h5py object. An fsspec file answers ``readinto`` by
handing the request to fsspec's I/O thread and waiting for it; should the garbage
collector run on that thread (or on zarr's, which the writers use) and free an h5py
object that sits in a reference cycle, that thread waits for the lock while the lock's
holder waits for the thread, and the process hangs for good (h5py issue 2019).

:class:`S3RangeFile` makes the reads with a synchronous botocore client in the thread
that asks for them, so h5py never waits on another thread while it holds its lock. A
read-ahead block keeps the many small metadata reads HDF5 makes to one request each.

The hash pass of an ingest reads an S3 upload front to back through :class:`S3Stream`:
ranged GETs of one block each, made by two threads of its own a few blocks ahead of the
hash, so that the transfer runs while the caller hashes and spools the blocks (through
fsspec's file, whose 8 MiB requests wait for the caller to ask, the two took turns). On ``rclone serve s3``
(``benchmarks/s3_ingest.py``, a 0.63 GB upload), one GET of the whole object read 8 MiB at a
time took 1.25 s and 1.18 s of the server's CPU; the ranged GETs took 0.93 s and 0.53 s
(docs/ingest.md, "Reading an S3 upload once").
"""

from __future__ import annotations

import io
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipelines.errors import ConfigError
from pipelines.lake_store import http_status, s3_client

__all__ = ["ObjectChanged", "S3RangeFile", "S3Stream", "s3_client", "split_s3_url"]

STREAM_RESUMES = 3  # GETs of one S3Stream that may break off and be asked again
STREAM_THREADS = 2  # threads of one S3Stream that make its ranged GETs


def split_s3_url(url: str) -> tuple[str, str]:
    """``("bucket", "key")`` of an ``s3://bucket/key`` URL."""
    rest = url[len("s3://") :] if url.startswith("s3://") else url
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ConfigError(f"{url!r} is not an s3://bucket/key URL")
    return bucket, key


class ObjectChanged(OSError):
    """The S3 object was replaced while it was being read (its ETag is no longer the one it had)."""


class S3RangeFile(io.RawIOBase):
    """A read-only, seekable file over one S3 object, read with ranged GETs in the caller's thread.

    ``block_size`` is the read-ahead: a read that misses the current block fetches the
    requested bytes plus this much more in one request.

    Raises
    ------
    FileNotFoundError
        When the object does not exist.
    """

    def __init__(self, url: str, storage_options: dict[str, Any], *, block_size: int) -> None:
        super().__init__()
        self.url = url
        self._bucket, self._key = split_s3_url(url)
        self._client = s3_client(storage_options)
        head = _head(self._client, self._bucket, self._key, url)
        self.size = int(head["ContentLength"])
        self._etag = head.get("ETag")
        self._block_size = block_size
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), max(self.size - self._pos, 0))
        if n == 0:
            return 0
        start, stop = self._pos, self._pos + n
        end = self._buf_start + len(self._buf)
        if not (self._buf_start <= start and stop <= end):
            self._buf = self._get(start, min(self.size, stop + self._block_size))
            self._buf_start = start
        offset = start - self._buf_start
        view[:n] = memoryview(self._buf)[offset : offset + n]
        self._pos = stop
        return n

    def _get(self, start: int, stop: int) -> bytes:
        data = _ranged_get(self._client, self._bucket, self._key, self.url, start, stop, self._etag)
        self.requests += 1
        return data


class ShortRead(OSError):
    """A ranged GET answered fewer bytes than it asked for (the answer broke off)."""


def _answer(call: Any, url: str, etag: str | None, **kwargs: Any) -> dict[str, Any]:
    """The answer of one request about the object at ``url`` (``call``: the client's
    ``head_object`` or ``get_object``), which must still have ``etag`` when given (``If-Match``,
    and the answer's ETag compared, for servers that ignore the condition).

    Raises ``FileNotFoundError`` (404), :class:`ObjectChanged` (412, or another ETag), ``OSError``.
    """
    from botocore.exceptions import ClientError

    if etag:
        kwargs["IfMatch"] = etag
    try:
        resp = call(**kwargs)
    except ClientError as e:
        if http_status(e) == 404:
            raise FileNotFoundError(f"no such object: {url}") from e
        if http_status(e) == 412:
            raise ObjectChanged(f"{url} changed while it was being read") from e
        where = f" bytes {kwargs['Range'][len('bytes=') :]}" if "Range" in kwargs else ""
        raise OSError(f"cannot read {url}{where}: {e}") from e
    if etag and resp.get("ETag") not in (None, etag):
        if "Body" in resp:
            resp["Body"].close()
        raise ObjectChanged(f"{url} changed while it was being read")
    return resp


def _head(client: Any, bucket: str, key: str, url: str, etag: str | None = None) -> dict[str, Any]:
    """The object's HEAD answer (``If-Match`` ``etag`` when given)."""
    return _answer(client.head_object, url, etag, Bucket=bucket, Key=key)


def _ranged_get(client: Any, bucket: str, key: str, url: str, start: int, stop: int, etag: str | None) -> bytes:
    """Bytes ``[start, stop)`` of the object, which must still have ``etag`` (when given)."""
    resp = _answer(client.get_object, url, etag, Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
    body = resp["Body"]
    try:
        data = body.read()
    finally:
        body.close()
    if len(data) != stop - start:
        raise ShortRead(f"{url}: asked for bytes {start}-{stop - 1}, got {len(data)} bytes")
    return data


class S3Stream:
    """One S3 object's bytes front to back, in ranged GETs of ``block_size`` bytes that a few
    threads of its own (``streams``) make up to ``ahead`` blocks ahead of the caller.

    ``read()`` returns the next block (``b""`` at the end). The object must keep one ETag
    from the first request to the last (``If-Match`` on every GET, and each answer's ETag
    compared, for servers that ignore the condition): ``etag`` when given, else the one its
    first request finds, so the blocks never mix two versions of the object. A GET that
    breaks off is asked again, up to :data:`STREAM_RESUMES` times over the whole stream.
    Errors reach the caller from ``read()``: ``FileNotFoundError`` (no such object),
    :class:`ObjectChanged`, ``OSError``. Use it as a context manager, or call ``close()``:
    its threads stop within one block.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any],
        *,
        block_size: int,
        ahead: int,
        etag: str | None = None,
        streams: int = STREAM_THREADS,
    ) -> None:
        self.url = url
        self._bucket, self._key = split_s3_url(url)
        self._client = s3_client(storage_options)
        self._block_size = block_size
        self._ahead = max(1, ahead)
        self._etag = etag
        self._size: int | None = None
        self._next = 0  # first byte of the next block to ask for
        self._pending: deque[Future[bytes]] = deque()
        self._breaks = 0  # GETs that broke off, over the whole stream
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ended = False
        self._pool = ThreadPoolExecutor(max(1, streams), thread_name_prefix="sclake-s3-stream")
        self._started = self._pool.submit(self._head)  # the size and ETag, while the caller gets ready

    def read(self, size: int = -1) -> bytes:  # noqa: ARG002 - a block, whatever was asked
        if self._ended:
            return b""
        try:
            if self._size is None:
                self._size, self._etag = self._started.result()
                self._ask()
            if not self._pending:
                self._ended = True
                return b""
            block = self._pending.popleft().result()
        except BaseException:
            self._ended = True
            raise
        self._ask()
        return block

    def close(self) -> None:
        self._stop.set()
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> S3Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self) -> None:
        """Ask for the next blocks until ``ahead`` are on their way or the object is covered."""
        assert self._size is not None
        while len(self._pending) < self._ahead and self._next < self._size:
            start, stop = self._next, min(self._size, self._next + self._block_size)
            self._pending.append(self._pool.submit(self._block, start, stop))
            self._next = stop

    def _head(self) -> tuple[int, str | None]:
        head = _head(self._client, self._bucket, self._key, self.url, self._etag)
        return int(head["ContentLength"]), self._etag or head.get("ETag")

    def _block(self, start: int, stop: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        while True:
            if self._stop.is_set():
                raise OSError(f"{self.url}: the stream was closed")
            try:
                return _ranged_get(self._client, self._bucket, self._key, self.url, start, stop, self._etag)
            except (BotoCoreError, ShortRead) as e:  # the answer broke off: ask for the block again
                with self._lock:
                    self._breaks += 1
                    breaks = self._breaks
                if breaks > STREAM_RESUMES:
                    raise OSError(f"cannot read {self.url} (at byte {start:,}): {e}") from e
