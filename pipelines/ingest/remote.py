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

The hash pass of an ingest reads an S3 upload front to back through :class:`S3Stream`: one
GET, read by a thread of its own a few blocks ahead of the hash, so that the transfer runs
while the caller hashes and spools the blocks (through fsspec's file, 8 MiB requests one
after the other, the two took turns).
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from pipelines.errors import ConfigError
from pipelines.lake_store import s3_client

__all__ = ["ObjectChanged", "S3RangeFile", "S3Stream", "s3_client", "split_s3_url"]

STREAM_RESUMES = 3  # times an S3Stream asks again, from the next byte, after its GET broke off


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
        from botocore.exceptions import ClientError

        super().__init__()
        self.url = url
        self._bucket, self._key = split_s3_url(url)
        self._client = s3_client(storage_options)
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=self._key)
        except ClientError as e:
            if _status(e) == 404:
                raise FileNotFoundError(f"no such object: {url}") from e
            raise OSError(f"cannot read {url}: {e}") from e
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
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={start}-{stop - 1}"}
        if self._etag:
            kwargs["IfMatch"] = self._etag  # the object must not change under the reader
        try:
            resp = self._client.get_object(**kwargs)
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except ClientError as e:
            if _status(e) == 412:
                raise ObjectChanged(f"{self.url} changed while it was being read") from e
            raise OSError(f"cannot read {self.url} bytes {start}-{stop - 1}: {e}") from e
        if self._etag and resp.get("ETag") not in (None, self._etag):  # servers that ignore If-Match
            raise ObjectChanged(f"{self.url} changed while it was being read")
        self.requests += 1
        if len(data) != stop - start:
            raise OSError(f"{self.url}: asked for bytes {start}-{stop - 1}, got {len(data)} bytes")
        return data


class S3Stream:
    """One S3 object's bytes front to back, from one GET that a thread of its own reads up to
    ``ahead`` blocks of ``block_size`` ahead of the caller.

    ``read()`` returns the next block (``b""`` at the end). With ``etag``, the object must
    keep that ETag (``If-Match``, and the answer's ETag is compared, for servers that ignore
    the condition). A GET that breaks off is asked again from the next byte, up to
    :data:`STREAM_RESUMES` times. Errors reach the caller from ``read()``: ``FileNotFoundError``
    (no such object), :class:`ObjectChanged`, ``OSError``. Use it as a context manager, or
    call ``close()``: the thread stops within one block.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any], *, block_size: int, ahead: int, etag: str | None = None
    ) -> None:
        self.url = url
        self._bucket, self._key = split_s3_url(url)
        self._client = s3_client(storage_options)
        self._block_size = block_size
        self._etag = etag
        self._blocks: queue.Queue[bytes | BaseException] = queue.Queue(max(1, ahead))
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._fetch, name="sclake-s3-stream", daemon=True)
        self._thread.start()

    def read(self, size: int = -1) -> bytes:  # noqa: ARG002 - a block, whatever was asked
        if self._ended:
            return b""
        item = self._blocks.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._ended = not item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> S3Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self) -> None:
        try:
            self._stream()
        except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
            self._put(e)

    def _stream(self) -> None:
        from botocore.exceptions import BotoCoreError

        done, breaks = 0, 0
        while not self._stop.is_set():
            body = self._get(done)
            try:
                while not self._stop.is_set():
                    try:
                        block = body.read(self._block_size)
                    except (BotoCoreError, OSError) as e:  # the answer broke off: ask from `done` on
                        breaks += 1
                        if breaks > STREAM_RESUMES:
                            raise OSError(f"cannot read {self.url} (at byte {done:,}): {e}") from e
                        break
                    self._put(block)
                    if not block:
                        return
                    done += len(block)
            finally:
                body.close()

    def _get(self, start: int) -> Any:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            resp = self._client.get_object(**kwargs)
        except ClientError as e:
            if _status(e) == 404:
                raise FileNotFoundError(f"no such object: {self.url}") from e
            if _status(e) == 412:
                raise ObjectChanged(f"{self.url} changed while it was being read") from e
            raise OSError(f"cannot read {self.url}: {e}") from e
        if self._etag and resp.get("ETag") not in (None, self._etag):  # servers that ignore If-Match
            resp["Body"].close()
            raise ObjectChanged(f"{self.url} changed while it was being read")
        return resp["Body"]

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


def _status(e: Any) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
