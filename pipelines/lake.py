"""The lake: storage access through fsspec, and atomic publish.

The layout (every lake path) lives in :mod:`pipelines.lake_layout` and the reading of a
lake URI in :mod:`pipelines.lake_store`; this module re-exports both.

Publishing: a writer stages its output under ``_staging/<final path>`` and commits it.
On ``file://`` the commit is one directory rename; on ``s3://`` objects are copied into
place and a ``_SUCCESS`` marker is written last. Readers treat a directory as published
only when its marker exists, so a crashed writer leaves nothing visible, and because the
staging path is derived from the final path a rerun can resume from what was staged.

A writer of a large output may ask for it to be written in place (``in_place=True``): on
a store without renames (S3) it then writes at the final path itself and the commit is the
marker alone, which saves a server-side copy of every object. Readers see the same thing
either way, since on S3 the objects of a staged commit also appear before its marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec

from pipelines.errors import LakeError
from pipelines.lake_layout import (
    DATASET_ID_RE,
    MODEL_NAME_RE,
    PATHS,
    STAGING,
    LakeKeyError,
    LakePaths,
    check_dataset_id,
    check_model_name,
    lake_key,
    part_name,
)
from pipelines.lake_store import http_status, s3_client, s3_storage_options, split_lake_uri
from pipelines.settings import Settings

__all__ = [
    "COMMIT_MARKER",
    "DATASET_ID_RE",
    "HASH_BLOCK",
    "MODEL_NAME_RE",
    "PATHS",
    "STAGING",
    "Lake",
    "LakeKeyError",
    "LakePaths",
    "check_dataset_id",
    "check_model_name",
    "lake_key",
    "open_lake",
    "part_name",
    "s3_storage_options",
]

COMMIT_MARKER = "_SUCCESS"
# S3's CopyObject copies up to 5 GiB in one request. s3fs switches to a multipart copy at
# 150 MiB, whose UploadPartCopy answers some S3 servers (rclone's) send without the part's
# ETag, so that s3fs fails; we use CopyObject up to its limit.
COPY_OBJECT_LIMIT = 5 * 2**30
PUBLISH_THREADS = 4  # server-side copies a commit on S3 makes at once (Lake._copy_tree)
# A CopyObject answers once the server has copied the object (rclone's server sends nothing
# meanwhile), so its read timeout grows with the size: s3fs's 15 s timed out on a 0.6 GB raw
# copy on a busy machine, and each retry copied the object once more.
COPY_TIMEOUT_FLOOR = 60.0  # seconds
COPY_TIMEOUT_RATE = 4 * 2**20  # bytes per second the copy is allowed to take, at the slowest
STREAM_COPY_BLOCK = 64 * 2**20
HASH_BLOCK = 8 * 1024 * 1024


_FS_LOCK = threading.Lock()  # one filesystem per Lake, whichever thread asks first


class Lake:
    """Access to the lake at ``settings.lake_uri`` through one fsspec filesystem."""

    def __init__(self, settings: Settings, paths: LakePaths = PATHS) -> None:
        self.settings = settings
        self.paths = paths
        self.protocol, self.root = split_lake_uri(settings.lake_uri)
        self.storage_options: dict[str, Any] = s3_storage_options(settings) if self.protocol == "s3" else {}
        self._fs: fsspec.AbstractFileSystem | None = None
        if self.protocol == "file":
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The lake's fsspec filesystem, made on first use: on S3, importing s3fs and its first
        request's client take about half a second that an ingest's identity pass, whose
        requests go through :func:`pipelines.lake_store.s3_client`, need not wait for."""
        if self._fs is None:
            with _FS_LOCK:
                if self._fs is None:
                    # Listings must see what other processes wrote a moment ago.
                    self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)
        return self._fs

    # -- naming -----------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"{self.protocol}://{self.root}"

    def path(self, rel: str) -> str:
        """Filesystem path (what ``self.fs`` takes) of a relative lake path."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        """Full URI (``s3://…`` or ``file://…``) of a relative lake path."""
        return f"{self.protocol}://{self.path(rel)}"

    def rel(self, path_or_url: str) -> str:
        """Inverse of :meth:`path`/:meth:`url`: the path relative to the lake root."""
        p = path_or_url.split("://", 1)[1] if "://" in path_or_url else path_or_url
        p = p.rstrip("/")
        if p == self.root:
            return ""
        if not p.startswith(self.root + "/"):
            raise LakeError(f"{path_or_url!r} is not inside the lake {self.uri!r}")
        return p[len(self.root) + 1 :]

    def key_of(self, location: str) -> str | None:
        """The lake path of ``location`` when it is in one of the lake's own forms, else ``None``.

        The forms: the lake's URL (``s3://lake/incoming/x.h5ad``) and, on ``file://``, an
        absolute local path under the root. The root itself, another store and a local path
        outside the lake give ``None``.
        """
        ours = location.startswith(f"{self.protocol}://") or (self.protocol == "file" and location.startswith("/"))
        if not ours:
            return None
        try:
            return self.rel(location) or None
        except LakeError:
            return None

    def reader_location(self, rel: str) -> str:
        """What a reader outside fsspec (DuckDB) opens for ``rel``: a local path on ``file://``, else the URL."""
        return self.path(rel) if self.protocol == "file" else self.url(rel)

    # -- plain access -------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any):
        if "w" in mode and self.protocol == "file":
            self.fs.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        return self.fs.open(self.path(rel), mode, **kwargs)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError as e:
            raise LakeError(f"{self.url(rel)!r} does not exist") from e

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open(rel, "wb") as f:
            f.write(data)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def ls(self, rel: str = "", *, recursive: bool = False, suffix: str = "", hidden: bool = False) -> list[str]:
        """Relative paths of the files under ``rel`` (sorted; staging files excluded, hidden ones unless ``hidden``)."""
        base = self.path(rel)
        self.fs.invalidate_cache()
        try:
            if recursive:
                found = self.fs.find(base)
            else:
                found = [e["name"] for e in self.fs.ls(base, detail=True)]
        except FileNotFoundError:
            return []
        out = []
        for name in found:
            r = self.rel(name)
            if r.startswith(STAGING + "/") or (not hidden and any(part.startswith(".") for part in r.split("/"))):
                continue
            if r.endswith(suffix):
                out.append(r)
        return sorted(out)

    def put(self, local: str | Path, rel: str) -> None:
        """Upload a local file to ``rel`` (one object: atomic on S3; rename on ``file://``)."""
        if self.protocol == "file":
            self._via_stage(rel, lambda tmp: self.fs.put_file(str(local), tmp))
        else:
            self.fs.put_file(str(local), self.path(rel))

    def put_atomic(self, rel: str, data: bytes) -> dict[str, Any]:
        """Write ``data`` to ``rel`` in one piece; returns ``{"path", "bytes", "sha256"}``.

        On ``file://`` the bytes go to a hidden temporary name in the same folder
        (``.<name>.tmp-<hex>``, which :meth:`open_stage` clears after a crash), are synced
        and renamed; on S3 a single PUT makes the object appear whole or not at all. A
        resumed run therefore never meets a half-written file.
        """
        if self.protocol == "file":
            final = Path(self.path(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            try:
                self.fs.pipe_file(self.path(rel), data)
            except OSError as e:
                raise LakeError(f"cannot write {self.url(rel)!r}: {e}") from e
        return {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def get(self, rel: str, local: str | Path) -> None:
        self.fs.get_file(self.path(rel), str(local))

    def put_tree(self, local: str | Path, rel: str) -> int:
        """Upload every file under the local folder ``local`` to ``rel`` (plain puts, e.g. into a stage); the count."""
        n = 0
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            dest = self.path(f"{rel}/{path.relative_to(local).as_posix()}")
            if self.protocol == "file":
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
            self.fs.put_file(str(path), dest)
            n += 1
        return n

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Copy one object inside the lake (server-side on S3; staged then renamed on ``file://``)."""
        self.copy_in(self.path(src_rel), dst_rel)

    def copy_in(self, src: str, dst_rel: str, size: int | None = None, *, if_match: str | None = None) -> str | None:
        """Copy the object at store path ``src`` (another bucket too, on S3) to the lake path ``dst_rel``.

        On ``file://`` staged then renamed; on S3 server-side, with ``size`` and ``if_match``
        as in :meth:`copy_object`. Returns the copy's ETag when the server gave one.
        """
        if self.protocol == "file":
            self._via_stage(dst_rel, lambda tmp: self.fs.copy(src, tmp))
            return None
        return self.copy_object(src, self.path(dst_rel), size, if_match=if_match)

    def copy_object(self, src: str, dst: str, size: int | None = None, *, if_match: str | None = None) -> str | None:
        """Copy one object between store paths (``bucket/key`` on S3, server-side).

        On ``file://`` a plain copy. On S3, up to :data:`COPY_OBJECT_LIMIT`, one CopyObject
        request (with ``if_match``, only if the source still has that ETag), which returns
        the copy's ETag; it is made by a synchronous client whose read timeout allows for
        the object's size (:data:`COPY_TIMEOUT_RATE`). Beyond the limit, s3fs's multipart
        copy; where the server's part answers lack ETags, the bytes are streamed through
        this process in multipart upload blocks. Returns the copy's ETag when the server
        gave one, else ``None``.

        Raises
        ------
        FileNotFoundError
            No object at ``src``.
        LakeError
            ``src`` no longer has the ETag ``if_match``, or the store refused the copy.
        """
        if self.protocol == "file":
            self.fs.copy(src, dst)
            return None
        if size is None:
            size = int(self.fs.info(src)["size"])
        if size <= COPY_OBJECT_LIMIT:
            return self._copy_object_request(src, dst, size, if_match)
        try:
            self.fs.copy(src, dst)
        except KeyError:  # s3fs read a part ETag the server did not send
            with (
                self.fs.open(src, "rb", block_size=STREAM_COPY_BLOCK) as r,
                self.fs.open(dst, "wb", block_size=STREAM_COPY_BLOCK) as w,
            ):
                while block := r.read(STREAM_COPY_BLOCK):
                    w.write(block)
        return None

    def _copy_object_request(self, src: str, dst: str, size: int, if_match: str | None) -> str | None:
        from botocore.exceptions import ClientError

        src_bucket, src_key, _ = self.fs.split_path(src)
        dst_bucket, dst_key, _ = self.fs.split_path(dst)
        kwargs: dict[str, Any] = {"CopySource": {"Bucket": src_bucket, "Key": src_key}}
        if if_match:
            kwargs["CopySourceIfMatch"] = if_match
        client = s3_client(self.storage_options, read_timeout=max(COPY_TIMEOUT_FLOOR, size / COPY_TIMEOUT_RATE))
        try:
            answer = client.copy_object(Bucket=dst_bucket, Key=dst_key, **kwargs)
        except ClientError as e:
            status = http_status(e)
            if status == 404:
                raise FileNotFoundError(f"no object to copy at s3://{src}") from e
            if status == 412:
                raise LakeError(f"s3://{src} changed (its ETag is no longer {if_match}); not copied") from e
            raise LakeError(f"cannot copy s3://{src} to s3://{dst}: {e}") from e
        finally:
            self.fs.invalidate_cache(dst)
        etag = (answer.get("CopyObjectResult") or {}).get("ETag")
        return str(etag) if etag else None

    def etag(self, path: str) -> str | None:
        """The current ETag of the object at store path ``path`` on S3 (not cached); ``None`` on
        ``file://``. Raises ``FileNotFoundError`` when there is no such object."""
        if self.protocol != "s3":
            return None
        return self.head(path)[1]

    def head(self, path: str) -> tuple[int, str | None]:
        """``(size, ETag)`` of the file or object at store path ``path``, asked now (not cached);
        the ETag is ``None`` on ``file://``. On S3 one HEAD request through the process's
        synchronous client (no s3fs). Raises ``FileNotFoundError`` when there is none: on S3 a
        key that is only a folder has none either."""
        if self.protocol != "s3":
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            return os.path.getsize(path), None
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            answer = s3_client(self.storage_options).head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            status = http_status(e)
            if status == 404:
                raise FileNotFoundError(f"no such object: s3://{path}") from e
            raise LakeError(f"cannot read s3://{path}: {e}") from e
        etag = answer.get("ETag")
        return int(answer["ContentLength"]), (str(etag) if etag else None)

    def rm(self, rel: str, *, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass

    def sha256(self, rel: str) -> str:
        """Hex SHA-256 of an object's bytes, streamed."""
        h = hashlib.sha256()
        with self.open(rel, "rb", block_size=HASH_BLOCK) as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
        return h.hexdigest()

    def _via_stage(self, rel: str, write: Callable[[str], Any]) -> None:
        """``file://``: ``write`` the file at its staging path, then rename it to ``rel``."""
        tmp = self.path(self.paths.staging(rel))
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        write(tmp)
        Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)
        Path(tmp).replace(self.path(rel))
        self._prune_staging(Path(tmp).parent)

    def _prune_staging(self, folder: Path) -> None:
        """Remove the empty folders a commit left under ``_staging/`` (``file://``).

        Only empty folders go (``rmdir``); a folder another writer is filling stays. ``_staging``
        and its first level (``_staging/zarr``, ``_staging/embeddings``, ...) stay too: other
        writers, Dask workers among them, create their folders under them at any moment, and
        a parent removed between two steps of their ``makedirs`` fails them.
        """
        root = Path(self.path(STAGING))
        while folder.is_relative_to(root) and folder.parent != root and folder != root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone: then its parent may be empty)
                if folder.exists():
                    return
            folder = folder.parent

    # -- atomic publish -------------------------------------------------------------------------------

    def is_published(self, final: str) -> bool:
        """Whether a directory output (Zarr store, embeddings partition) was committed."""
        return self.exists(f"{final.strip('/')}/{COMMIT_MARKER}")

    def commit_info(self, final: str) -> dict[str, Any]:
        """The JSON the writer stored in the commit marker."""
        return self.read_json(f"{final.strip('/')}/{COMMIT_MARKER}")

    @contextlib.contextmanager
    def publishing(
        self, final: str, *, resume: bool = False, info: dict[str, Any] | None = None, in_place: bool = False
    ) -> Iterator[str]:
        """Stage a directory output and commit it on success.

        Yields the relative staging path to write into (:meth:`stage_path`). On normal exit
        the staged tree becomes visible at ``final`` with a ``_SUCCESS`` marker holding
        ``info``; on an exception nothing becomes visible and the staged files stay for a
        resumed run (``resume=True``) or are cleared by the next run (``resume=False``).
        """
        final = final.strip("/")
        if self.stage_path(final, in_place=in_place) == final and self.is_published(final):
            raise LakeError(f"{self.url(final)!r} is already published; it is immutable")
        if not resume:
            self.discard_unpublished(final, in_place=in_place)
        stage = self._make_stage(final, in_place=in_place)
        commit = dict(info or {})
        yield stage
        self.commit(stage, final, commit)

    def open_stage(self, final: str) -> str:
        """The staging folder of ``final``, ready for a resumed writer; returns its relative path.

        Creates the folder where the store needs one (``file://``) and removes the temporary
        files a crashed :meth:`put_atomic` left there; complete files stay, so a writer that
        ran halfway can keep what it staged (:meth:`staged_parts`) and write the rest.
        Publish with :meth:`commit`.
        """
        stage = self._make_stage(final)
        if self.protocol == "file":
            folder = Path(self.path(stage))
            for tmp in folder.glob(".*.tmp-*") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)
        return stage

    def stage_path(self, final: str, *, in_place: bool = False) -> str:
        """Where a writer of ``final`` writes before the commit.

        ``_staging/<final>``, or with ``in_place`` on a store without renames (S3) ``final``
        itself: its commit is then the marker alone (no copy of every object).
        """
        final = final.strip("/")
        return final if in_place and self.protocol != "file" else self.paths.staging(final)

    def discard_unpublished(self, final: str, *, in_place: bool = False) -> None:
        """Remove what an unfinished writer of ``final`` left (its stage); a published output stays."""
        stage = self.stage_path(final, in_place=in_place)
        if stage != final.strip("/") or not self.is_published(final):
            self.rm(stage, recursive=True)

    def _make_stage(self, final: str, *, in_place: bool = False) -> str:
        stage = self.stage_path(final, in_place=in_place)
        if self.protocol == "file":
            self.fs.makedirs(self.path(stage), exist_ok=True)
        return stage

    def staged_parts(self, stage: str, suffix: str = ".parquet") -> list[str]:
        """The part files (``part-*<suffix>``) already in the staging folder ``stage``, as sorted lake paths."""
        self.fs.invalidate_cache()
        try:
            names = self.fs.ls(self.path(stage), detail=False)
        except FileNotFoundError:
            return []
        return sorted(
            posixpath.join(stage, posixpath.basename(n))
            for n in names
            if posixpath.basename(n).startswith("part-") and n.endswith(suffix)
        )

    def commit(self, stage: str, final: str, info: dict[str, Any] | None = None, *, exist_ok: bool = False) -> bool:
        """Make ``stage`` visible at ``final`` (replacing an unpublished leftover there).

        Returns ``True``. When ``final`` is already published (by another run of the same
        writer), returns ``False`` with ``exist_ok`` and leaves ``stage`` alone, else raises
        :class:`LakeError`: a published output is immutable.
        """
        marker = json.dumps(info or {}, indent=2, sort_keys=True, default=str).encode()
        stage, final = stage.strip("/"), final.strip("/")
        if self.is_published(final):
            if exist_ok:
                return False
            raise LakeError(f"{self.url(final)!r} is already published; it is immutable")
        if stage == final:  # written in place (stage_path): the marker is the commit
            self.write_bytes(f"{final}/{COMMIT_MARKER}", marker)
            return True
        if self.protocol == "file":
            src, dst = Path(self.path(stage)), Path(self.path(final))
            (src / COMMIT_MARKER).write_bytes(marker)
            if dst.exists():  # an unpublished leftover
                self.fs.rm(str(dst), recursive=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)  # one rename: the whole tree appears at once
            self._prune_staging(src.parent)
            return True
        # S3: copy every staged object into place, then write the marker last.
        self._copy_tree(self.path(stage), self.path(final))
        self.write_bytes(f"{final}/{COMMIT_MARKER}", marker)
        self.rm(stage, recursive=True)
        return True

    def _copy_tree(self, src_root: str, dst_root: str) -> None:
        """Server-side copies of every object under ``src_root`` (but a marker) to ``dst_root``.

        Copies run :data:`PUBLISH_THREADS` at a time, but never two that create files in
        one new folder: rclone's ``serve s3`` fails such concurrent writes. The objects are
        grouped by the subtree two folders below the root that holds them (``parts/00003``,
        ``var/_index``; files nearer the root form groups of their folder). The first
        object of each group is copied alone, one after the other, which creates every
        group's folder and their parents; then each group's other objects are copied in
        order by one thread, so that the folders created meanwhile are in disjoint subtrees.
        """
        from concurrent.futures import ThreadPoolExecutor

        self.fs.invalidate_cache()
        groups: dict[str, list[tuple[str, str, int]]] = {}
        for obj, entry in sorted(self.fs.find(src_root, detail=True).items()):
            tail = obj[len(src_root) + 1 :]
            if tail != COMMIT_MARKER:
                group = "/".join(tail.split("/")[:-1][:2])
                groups.setdefault(group, []).append((obj, f"{dst_root}/{tail}", int(entry.get("size") or 0)))

        def copy(objects: list[tuple[str, str, int]]) -> None:
            for src, dst, size in objects:
                self.copy_object(src, dst, size)

        copy([objects[0] for objects in groups.values()])
        rest = [objects[1:] for objects in groups.values() if len(objects) > 1]
        if not rest:
            return
        with ThreadPoolExecutor(min(PUBLISH_THREADS, len(rest)), thread_name_prefix="sclake-publish") as pool:
            for done in [pool.submit(copy, objects) for objects in rest]:
                done.result()

    def unpublish(self, final: str) -> None:
        """Remove a published directory (marker first, so readers stop seeing it at once)."""
        self.rm(f"{final.strip('/')}/{COMMIT_MARKER}")
        self.rm(final, recursive=True)


def open_lake(settings: Settings | None = None) -> Lake:
    from pipelines.settings import get_settings

    return Lake(settings or get_settings())
