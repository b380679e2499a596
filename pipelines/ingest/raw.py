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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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
    if not _exists(lake, up):
        raise InputError(f"{uri!r} does not exist", "check the path or upload the file first", code="not_found")
    return up


def _exists(lake: Lake, up: Upload) -> bool:
    if up.local is not None:
        return up.local.is_file()
    return lake.fs.exists(up.fs_path or lake.path(up.rel or ""))


def size(lake: Lake, up: Upload) -> int:
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


def _stream_digests(f: Any, *, sha: bool) -> tuple[str | None, str, int]:
    import xxhash

    h = hashlib.sha256() if sha else None
    x = xxhash.xxh3_128()
    n = 0
    while block := f.read(HASH_BLOCK):
        if h is not None:
            h.update(block)
        x.update(block)
        n += len(block)
    return (h.hexdigest() if h is not None else None), x.hexdigest(), n


def _open(lake: Lake, up: Upload) -> Any:
    if up.local is not None:
        return open(up.local, "rb")  # noqa: SIM115
    return lake.fs.open(up.fs_path or lake.path(up.rel or ""), "rb", block_size=HASH_BLOCK)


def fingerprint(lake: Lake, up: Upload) -> Fingerprint:
    """SHA-256, XXH3-128 and size of the upload's bytes, in one streamed pass (and its ETag on S3).

    Raises
    ------
    LakeError
        When the S3 object was replaced while it was read.
    """
    before = _etag(lake, up)
    with _open(lake, up) as f:
        sha, xxh, n = _stream_digests(f, sha=True)
    if _etag(lake, up) != before:
        raise LakeError(f"{up.uri!r} was replaced while it was read; ingest it again once the upload is complete")
    return Fingerprint(str(sha), xxh, n, before)


def _etag(lake: Lake, up: Upload) -> str | None:
    if up.local is not None:
        return None
    return lake.etag(up.fs_path or lake.path(up.rel or ""))


MD5_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}"?$')  # an object written in one request, unencrypted or SSE-S3


def sha256(lake: Lake, up: Upload) -> str:
    """Hex SHA-256 of the upload's bytes, streamed."""
    return fingerprint(lake, up).sha256


def read_location(lake: Lake, up: Upload) -> tuple[str, dict[str, Any]]:
    """``(url, storage_options)`` to read the upload's bytes with h5py/fsspec."""
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
