"""Upload identity and the raw copy: where the bytes are, their SHA-256, ``raw/<id>.h5ad``.

An upload is an object in the lake (typically under ``incoming/``), an ``s3://`` object
outside the lake on the same endpoint, or a local file (a path or a ``file://`` URI
outside a ``file://`` lake). Its dataset id is the first 16 hex digits of the SHA-256 of
its bytes, streamed. The same pass computes their XXH3-128 checksum. The original is
copied to ``raw/<dataset_id>.h5ad`` (server-side within S3, streamed from a local file)
and the copy is verified before anything removes the upload: its size, then its
XXH3-128 read back, must be the upload's. XXH3 reads at memory speed (about 8 GB/s here,
SHA-256 1.3 GB/s) and catches any corruption or truncation of a copy with a chance of
missing one of 2^-128; the SHA-256 names the bytes, the XXH3 checks that they arrived.

A server-side copy on S3 is checked by the server instead, without reading it back: the
upload's ETag is read before and after the hash pass (they must agree: the bytes hashed
are the object's), the copy is made only if the source still has that ETag
(``CopySourceIfMatch``), and the copy's ETag must equal it. Both are the MD5 of the
bytes for objects written in one request (``"<32 hex digits>"``); for other ETags
(multipart uploads, encryption with KMS) the copy is read back as above.

An S3 upload is read from the store once: the hash pass writes the bytes it hashes into a
local spool file (:func:`spool_for`), from which the inspection and the conversion's
tasks read them when the workers share this machine's files (the local cluster). The
server's own SHA-256 checksum (``x-amz-checksum-sha256``) is not used to name a dataset:
some S3 servers (rclone's ``serve s3``) store the value a client sends without checking
it against the bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.errors import InputError, LakeError
from pipelines.lake import HASH_BLOCK, PATHS, Lake


@dataclass(frozen=True)
class Upload:
    """One upload. Exactly one of ``rel`` (lake path), ``fs_path`` (same store, outside the lake)
    and ``local`` (local file) is set."""

    uri: str
    rel: str | None = None
    fs_path: str | None = None
    local: Path | None = None
    size: int | None = None  # bytes, where resolve_upload had the store's answer (S3's HEAD)

    @property
    def in_incoming(self) -> bool:
        return self.rel is not None and self.rel.startswith(PATHS.incoming + "/")

    @property
    def name(self) -> str:
        return (self.rel or self.fs_path or str(self.local)).rstrip("/").rsplit("/", 1)[-1]


def resolve_upload(lake: Lake, uri: str) -> Upload:
    """Locate ``uri``: a lake URI, a key relative to the lake (``incoming/x.h5ad``), a local path.

    Raises ``InputError`` (code ``not_found``) when nothing is there.
    """
    up: Upload | None = None
    if uri.startswith("s3://"):
        if lake.protocol != "s3":
            raise InputError(
                f"{uri!r} is on S3 but the lake is {lake.uri!r}",
                "upload it into the lake's incoming/",
                code="not_found",
            )
        path = uri[len("s3://") :]
        try:
            up = Upload(uri, rel=lake.rel(path))
        except LakeError:
            up = Upload(uri, fs_path=path)
    elif uri.startswith("file://") or Path(uri).expanduser().exists() or "://" in uri:
        if "://" in uri and not uri.startswith("file://"):
            raise InputError(
                f"{uri!r} has an unsupported scheme", "give a local path, file:// or s3:// URI", code="not_found"
            )
        local = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser().resolve()
        rel = lake.key_of(str(local))
        up = Upload(uri, rel=rel) if rel is not None else Upload(uri, local=local)
    else:
        up = Upload(uri, rel=uri.strip("/"))  # a key relative to the lake
    found = _exists(lake, up)
    if found is None:
        raise InputError(f"{uri!r} does not exist", "check the path or upload the file first", code="not_found")
    return found


def _exists(lake: Lake, up: Upload) -> Upload | None:
    """``up`` when it exists (on S3 with its size, from one HEAD request), else ``None``."""
    if up.local is not None:
        return up if up.local.is_file() else None
    path = up.fs_path or lake.path(up.rel or "")
    if lake.protocol != "s3":
        return up if lake.fs.exists(path) else None
    try:  # no s3fs yet: the identity pass can start while it loads
        n, _ = lake.head(path)
    except FileNotFoundError:
        return None
    return replace(up, size=n)


def size(lake: Lake, up: Upload) -> int:
    if up.size is not None:
        return up.size
    if up.local is not None:
        return up.local.stat().st_size
    return int(lake.fs.size(up.fs_path or lake.path(up.rel or "")))


@dataclass(frozen=True)
class Fingerprint:
    """An upload's bytes: SHA-256 (the dataset id), XXH3-128 (the check of copies), size."""

    sha256: str
    xxh3: str
    size: int
    etag: str | None = None  # an S3 upload's ETag, the same before and after the pass; None for local files

    @property
    def dataset_id(self) -> str:
        return self.sha256[:16]


def _stream_digests(f: Any, *, sha: bool, out: Any = None) -> tuple[str | None, str, int]:
    """SHA-256 (when ``sha``), XXH3-128 and length of what ``f`` reads; each block is also
    written to the file object ``out`` when one is given."""
    import xxhash

    h = hashlib.sha256() if sha else None
    x = xxhash.xxh3_128()
    n = 0
    while block := f.read(HASH_BLOCK):
        if h is not None:
            h.update(block)
        x.update(block)
        if out is not None:
            out.write(block)
        n += len(block)
    return (h.hexdigest() if h is not None else None), x.hexdigest(), n


READ_AHEAD_BLOCKS = 4  # blocks of HASH_BLOCK the hash pass's reader keeps ahead of the hash (S3)


def _open(lake: Lake, up: Upload, etag: str | None) -> Any:
    if up.local is not None:
        return open(up.local, "rb")  # noqa: SIM115
    if lake.protocol != "s3":
        return lake.fs.open(lake.path(up.rel or ""), "rb", block_size=HASH_BLOCK)
    from pipelines.ingest.remote import S3Stream

    url = f"s3://{up.fs_path or lake.path(up.rel or '')}"
    return S3Stream(url, lake.storage_options, block_size=HASH_BLOCK, ahead=READ_AHEAD_BLOCKS, etag=etag)


def fingerprint(lake: Lake, up: Upload, spool: Path | None = None) -> Fingerprint:
    """SHA-256, XXH3-128 and size of the upload's bytes, in one streamed pass (and its ETag on S3).

    An S3 upload is read in ranged GETs of one block each, a few blocks ahead of the hash
    (:class:`pipelines.ingest.remote.S3Stream`), so that the transfer and the hash overlap.

    With ``spool`` (from :func:`spool_for`), the bytes read are also written to that local
    file, so that nothing else needs to read the upload from the store again.

    Raises
    ------
    LakeError
        When the S3 object was replaced while it was read.
    """
    from pipelines.ingest.remote import ObjectChanged

    replaced = f"{up.uri!r} was replaced while it was read; ingest it again once the upload is complete"
    before = _etag(lake, up)
    try:
        with (
            _open(lake, up, before) as f,
            open(spool, "wb") if spool is not None else contextlib.nullcontext() as out,  # noqa: SIM115
        ):
            sha, xxh, n = _stream_digests(f, sha=True, out=out)
    except ObjectChanged as e:
        raise LakeError(replaced) from e
    if _etag(lake, up) != before:
        raise LakeError(replaced)
    return Fingerprint(str(sha), xxh, n, before)


SPOOL_DIR = "sclake-spool"  # under the system's temporary folder
SPOOL_HEADROOM = 512 * 2**20  # free space left on the spool's file system beyond the upload
SHM = Path("/dev/shm")  # a memory file system: a spool there is never written back to a disk
SHM_SHARE = 8  # a spool in memory may take at most this fraction of the memory at hand


def spool_for(lake: Lake, up: Upload) -> Path | None:
    """A local file to hold an S3 upload's bytes while it is ingested, or ``None``.

    ``None`` for uploads that are local files already, and when no file system has room for
    the upload's size plus :data:`SPOOL_HEADROOM` (the tasks then read the store). The spool
    goes to ``/dev/shm`` when it is a memory file system and the upload takes at most
    1/:data:`SHM_SHARE` of the memory this process may still use (the machine's available
    memory, or its cgroup's limit less what the cgroup uses, whichever is less): the bytes
    are then never written back to a disk while the conversion reads them. Else it goes to
    the system's temporary folder. The file is named after this process
    (``<pid>-<random>.h5ad``); spool files of processes that no longer run (a killed ingest)
    are removed here. The caller removes its own with :func:`drop_spool`.
    """
    if up.local is not None or lake.protocol != "s3":
        return None
    in_memory, on_disk = SHM / SPOOL_DIR, Path(tempfile.gettempdir()) / SPOOL_DIR
    for folder in (in_memory, on_disk):
        for old in folder.glob("*-*") if folder.is_dir() else ():
            pid = old.name.split("-", 1)[0]
            if pid.isdigit() and not _running(int(pid)):
                old.unlink(missing_ok=True)
    n = size(lake, up)
    fits_in_memory = n * SHM_SHARE <= memory_at_hand() and _is_tmpfs(SHM)
    for folder in (in_memory, on_disk) if fits_in_memory else (on_disk,):
        with contextlib.suppress(OSError):
            folder.mkdir(exist_ok=True)
            if shutil.disk_usage(folder).free >= n + SPOOL_HEADROOM:
                return folder / f"{os.getpid()}-{uuid.uuid4().hex[:16]}.h5ad"
    return None


def memory_at_hand() -> int:
    """Bytes of memory this process may still fill: the machine's available memory, or less
    where a memory cgroup of this process or of its parents is nearer its limit (v2 or v1)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return 0
    for folder, limit_name, usage_name in _memory_cgroups():
        while True:
            with contextlib.suppress(OSError, ValueError):
                limit = (folder / limit_name).read_text().strip()
                if limit.isdigit():
                    available = min(available, int(limit) - int((folder / usage_name).read_text()))
            if folder.parent == folder or not (folder.parent / limit_name).exists():
                break
            folder = folder.parent
    return max(available, 0)


def _memory_cgroups() -> list[tuple[Path, str, str]]:
    """This process's memory cgroup folders, with their limit and usage file names."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            out.append((Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            out.append((folder, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    return [c for c in out if (c[0] / c[1]).exists()]


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1:3] == [str(path), "tmpfs"] for line in mounts)


def spool_readable(path: str, size: int) -> bool:
    """Run on a Dask worker: whether it can read the spool file ``path`` of ``size`` bytes.

    The file's name is random (:func:`spool_for`), so a file of that name and size is that
    spool: a worker on the driver's host and file system sees it, any other does not.
    """
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


def drop_spool(spool: Path | None) -> None:
    if spool is not None:
        spool.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _etag(lake: Lake, up: Upload) -> str | None:
    if up.local is not None:
        return None
    return lake.etag(up.fs_path or lake.path(up.rel or ""))


MD5_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}"?$')  # an object written in one request, unencrypted or SSE-S3


def sha256(lake: Lake, up: Upload) -> str:
    """Hex SHA-256 of the upload's bytes, streamed."""
    return fingerprint(lake, up).sha256


def read_location(lake: Lake, up: Upload, spool: Path | None = None) -> tuple[str, dict[str, Any]]:
    """``(url, storage_options)`` to read the upload's bytes with h5py/fsspec (the spool file, if any)."""
    if spool is not None:
        return str(spool), {}
    if up.local is not None:
        return str(up.local), {}
    if up.fs_path is not None:
        return f"s3://{up.fs_path}", lake.storage_options
    return lake.url(up.rel or ""), lake.storage_options


def raw_is_verified(lake: Lake, fp: Fingerprint) -> bool:
    """Whether ``raw/<id>.h5ad`` holds exactly the upload's bytes (size, then XXH3-128 read back)."""
    rel = PATHS.raw(fp.dataset_id)
    if not lake.exists(rel) or lake.size(rel) != fp.size:
        return False
    with lake.open(rel, "rb", block_size=HASH_BLOCK) as f:
        _, xxh, n = _stream_digests(f, sha=False)
    return n == fp.size and xxh == fp.xxh3


def store_raw(lake: Lake, up: Upload, fp: Fingerprint) -> str:
    """Copy the upload to ``raw/<dataset_id>.h5ad`` unless it is there already; verify; return the path.

    Raises
    ------
    LakeError
        When the copy's size or checksum differs from the upload's.
    """
    rel = PATHS.raw(fp.dataset_id)
    if up.rel == rel or raw_is_verified(lake, fp):
        return rel
    if up.local is not None:
        lake.put(up.local, rel)
    else:
        etag = lake.copy_in(up.fs_path or lake.path(up.rel or ""), rel, fp.size, if_match=fp.etag)
        if fp.etag and etag == fp.etag and MD5_ETAG.match(etag):
            return rel  # the server copied the bytes that were hashed (see the module docstring)
    if not raw_is_verified(lake, fp):
        lake.rm(rel)
        raise LakeError(f"the copy of {up.uri!r} at {lake.url(rel)!r} does not match the original (size or checksum)")
    return rel


def remove_upload(lake: Lake, up: Upload) -> bool:
    """Remove an upload under ``incoming/`` (its verified copy is in ``raw/``); others are left alone."""
    if not up.in_incoming:
        return False
    lake.rm(up.rel or "")
    return True
