"""The lake: every lake path built in one place, storage access through fsspec, atomic publish.

Layout (relative to ``SCLAKE_LAKE_URI``)::

    incoming/                                   drop zone (any sub-folders)
    raw/<dataset_id>.h5ad                       accepted originals, immutable
    zarr/<dataset_id>.zarr                      the chunked dataset
    tokens/dataset_id=<id>/vocab=<hash>/part-<NNNNN>.parquet   rank-value tokens, shared by models of one vocabulary
    embeddings/model=<m>/dataset_id=<id>/part-<NNNNN>.parquet
    quarantine/<dataset_id>/                    rejected uploads + reason.json
    reports/<dataset_id>/                       validation results, Data Docs, QC plots, lineage records
    cells/dataset_id=<dataset_id>/obs.parquet   obs of every cell (for the DuckDB ``cells`` view)
    models/                                     mirrored model files
    _staging/<final path>                       work in progress, never read by consumers

Publishing: a writer stages its output under ``_staging/<final path>`` and commits it.
On ``file://`` the commit is one directory rename; on ``s3://`` objects are copied into
place and a ``_SUCCESS`` marker is written last. Readers treat a directory as published
only when its marker exists, so a crashed writer leaves nothing visible, and because the
staging path is derived from the final path a rerun can resume from what was staged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from pipelines.errors import ConfigError, LakeError
from pipelines.settings import Settings

COMMIT_MARKER = "_SUCCESS"
# S3's CopyObject copies up to 5 GiB in one request. s3fs switches to a multipart copy at
# 150 MiB, whose UploadPartCopy answers some S3 servers (rclone's) send without the part's
# ETag, so that s3fs fails; we use CopyObject up to its limit.
COPY_OBJECT_LIMIT = 5 * 2**30
STREAM_COPY_BLOCK = 64 * 2**20
STAGING = "_staging"
DATASET_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
HASH_BLOCK = 8 * 1024 * 1024


def check_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it is 16 lowercase hex digits, else raise ``ValueError``."""
    if not DATASET_ID_RE.match(dataset_id or ""):
        raise ValueError(f"dataset id {dataset_id!r} is not 16 lowercase hex digits (the start of a SHA-256)")
    return dataset_id


def check_model_name(model: str) -> str:
    if not MODEL_NAME_RE.match(model or ""):
        raise ValueError(f"model name {model!r} may only hold letters, digits, '.', '_' and '-'")
    return model


class LakeKeyError(LakeError, ValueError):
    """A lake key given by a user that cannot be used: empty, a URI, or outside its prefix."""


def lake_key(key: str, prefix: str = "") -> str:
    """A user-given lake key, normalised and confined to ``prefix``.

    The one place where keys that users type (``--to incoming/x.h5ad``, an upload key)
    become lake paths. Leading slashes are dropped (the lake root), empty and ``.``
    components removed and ``..`` resolved (``incoming/a/../b.h5ad`` is
    ``incoming/b.h5ad``). The result must lie strictly inside ``prefix`` (default: the
    lake root), so ``incoming/../raw/x.h5ad`` under ``incoming`` and
    ``incoming/../../x.h5ad`` anywhere are refused.

    Raises
    ------
    LakeKeyError
        The key is empty, a URI, holds a backslash or NUL, or resolves outside ``prefix``;
        the message names the key, what it resolves to and what is accepted.
    """
    prefix = prefix.strip("/")
    where = f"under {prefix}/" if prefix else "inside the lake"
    example = f"{prefix}/<name>.h5ad" if prefix else "incoming/<name>.h5ad"
    if not isinstance(key, str) or not key.strip("/ "):
        raise LakeKeyError(f"lake key {key!r} is empty; give a key {where}, e.g. {example}")
    if "://" in key:
        raise LakeKeyError(f"{key!r} is a URI, not a lake key; give a key {where}, e.g. {example}")
    if "\\" in key or "\0" in key:
        raise LakeKeyError(f"lake key {key!r} holds a backslash or NUL character; use '/' between folders")
    norm = posixpath.normpath(key.lstrip("/"))
    inside = norm.startswith(f"{prefix}/") if prefix else norm not in (".", "..") and not norm.startswith("../")
    if not inside:
        raise LakeKeyError(
            f"lake key {key!r} resolves to {norm!r}, which is not a key {where}; give a key like {example}"
        )
    return norm


def part_name(part: int) -> str:
    """``part-00042``: the zero-padded part file stem."""
    if part < 0:
        raise ValueError(f"part index {part!r} must be >= 0")
    return f"part-{part:05d}"


@dataclass(frozen=True)
class LakePaths:
    """Relative lake paths (posix, no scheme) built from (dataset_id, model, part)."""

    incoming: str = "incoming"
    raw_dir: str = "raw"
    zarr_dir: str = "zarr"
    embeddings_dir: str = "embeddings"
    quarantine_dir: str = "quarantine"
    reports_dir: str = "reports"
    models_dir: str = "models"
    cells_dir: str = "cells"
    tokens_dir: str = "tokens"
    state_dir: str = "_state"

    def raw(self, dataset_id: str) -> str:
        return f"{self.raw_dir}/{check_dataset_id(dataset_id)}.h5ad"

    def zarr(self, dataset_id: str) -> str:
        return f"{self.zarr_dir}/{check_dataset_id(dataset_id)}.zarr"

    def embeddings(self, model: str, dataset_id: str) -> str:
        return f"{self.embeddings_dir}/model={check_model_name(model)}/dataset_id={check_dataset_id(dataset_id)}"

    def embedding_part(self, model: str, dataset_id: str, part: int) -> str:
        return f"{self.embeddings(model, dataset_id)}/{part_name(part)}.parquet"

    def quarantine(self, dataset_id: str) -> str:
        return f"{self.quarantine_dir}/{check_dataset_id(dataset_id)}"

    def reports(self, dataset_id: str) -> str:
        return f"{self.reports_dir}/{check_dataset_id(dataset_id)}"

    def lineage_record(self, dataset_id: str, model: str | None = None) -> str:
        """``reports/<id>/lineage/ingest.json``, or ``.../model=<m>.json`` for an embedding run."""
        name = "ingest" if model is None else f"model={check_model_name(model)}"
        return f"{self.reports(dataset_id)}/lineage/{name}.json"

    def qc_plot(self, dataset_id: str, model: str) -> str:
        return f"{self.reports(dataset_id)}/qc/{check_model_name(model)}.png"

    def validation(self, dataset_id: str, model: str | None = None) -> str:
        """Published folder of a validation: ``reports/<id>/validation`` (the dataset suites) or
        ``reports/<id>/embedding_validation/model=<m>`` (the embedding-output suite).

        Holds ``validation.json`` (the summary), ``gx_results.json``, ``data_docs/`` (GX Data Docs)
        and, for the dataset, ``validated_cells.parquet``.
        """
        if model is None:
            return f"{self.reports(dataset_id)}/validation"
        return f"{self.reports(dataset_id)}/embedding_validation/model={check_model_name(model)}"

    def validated_cells(self, dataset_id: str) -> str:
        """Per cell (part, row): its stats and whether it passed validation (``kept``)."""
        return f"{self.validation(dataset_id)}/validated_cells.parquet"

    def cells(self, dataset_id: str) -> str:
        """The published directory holding a dataset's ``obs.parquet``."""
        return f"{self.cells_dir}/dataset_id={check_dataset_id(dataset_id)}"

    def cells_obs(self, dataset_id: str) -> str:
        return f"{self.cells(dataset_id)}/obs.parquet"

    def tokens(self, dataset_id: str, vocab_hash: str) -> str:
        """Published folder of a dataset's tokens for one vocabulary (``Vocabulary.hash``)."""
        if not re.match(r"^[0-9a-f]{16}$", vocab_hash or ""):
            raise ValueError(f"vocabulary hash {vocab_hash!r} is not 16 lowercase hex digits")
        return f"{self.tokens_dir}/dataset_id={check_dataset_id(dataset_id)}/vocab={vocab_hash}"

    def token_part(self, dataset_id: str, vocab_hash: str, part: int) -> str:
        return f"{self.tokens(dataset_id, vocab_hash)}/{part_name(part)}.parquet"

    def state(self, name: str) -> str:
        return f"{self.state_dir}/{name}"

    def staging(self, final: str) -> str:
        return f"{STAGING}/{final.strip('/')}"


PATHS = LakePaths()


def s3_storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec/s3fs options for the configured S3 endpoint.

    Checksums are computed and validated only when required: S3-compatible servers
    (rclone's, some MinIO releases) send the whole object's checksum on ranged reads,
    which current botocore would reject.
    """
    opts: dict[str, Any] = {
        "config_kwargs": {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"addressing_style": "path"},
        },
        "client_kwargs": {"region_name": settings.s3_region},
    }
    if settings.s3_endpoint_url:
        opts["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key:
        opts["key"] = settings.s3_access_key
        opts["secret"] = settings.s3_secret_key or ""
    else:
        opts["anon"] = False
    return opts


def _split_uri(uri: str) -> tuple[str, str]:
    """``(protocol, root)``; ``root`` has no scheme and no trailing slash."""
    if uri.startswith("s3://"):
        return "s3", uri[len("s3://") :].strip("/")
    if uri.startswith("file://"):
        return "file", str(Path(uri[len("file://") :]).resolve())
    if "://" in uri:
        raise ConfigError(f"lake URI {uri!r} has an unsupported scheme; use s3://bucket[/prefix] or file:///abs/path")
    return "file", str(Path(uri).expanduser().resolve())


class Lake:
    """Access to the lake at ``settings.lake_uri`` through one fsspec filesystem."""

    def __init__(self, settings: Settings, paths: LakePaths = PATHS) -> None:
        self.settings = settings
        self.paths = paths
        self.protocol, self.root = _split_uri(settings.lake_uri)
        self.storage_options: dict[str, Any] = s3_storage_options(settings) if self.protocol == "s3" else {}
        # Listings must see what other processes wrote a moment ago.
        self.fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)
        if self.protocol == "file":
            Path(self.root).mkdir(parents=True, exist_ok=True)

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
            tmp = self.path(self.paths.staging(rel))
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            self.fs.put_file(str(local), tmp)
            self._rename(tmp, self.path(rel))
        else:
            self.fs.put_file(str(local), self.path(rel))

    def get(self, rel: str, local: str | Path) -> None:
        self.fs.get_file(self.path(rel), str(local))

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Copy one object inside the lake (server-side on S3; staged then renamed on ``file://``)."""
        if self.protocol == "file":
            tmp = self.path(self.paths.staging(dst_rel))
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            self.fs.copy(self.path(src_rel), tmp)
            self._rename(tmp, self.path(dst_rel))
        else:
            self.copy_object(self.path(src_rel), self.path(dst_rel))

    def copy_object(self, src: str, dst: str, size: int | None = None, *, if_match: str | None = None) -> str | None:
        """Copy one object between store paths (``bucket/key`` on S3, server-side).

        On ``file://`` a plain copy. On S3, up to :data:`COPY_OBJECT_LIMIT`, one CopyObject
        request (with ``if_match``, only if the source still has that ETag), which returns
        the copy's ETag. Beyond it, s3fs's multipart copy; where the server's part answers
        lack ETags, the bytes are streamed through this process in multipart upload blocks.
        Returns the copy's ETag when the server gave one, else ``None``.
        """
        if self.protocol == "file":
            self.fs.copy(src, dst)
            return None
        if size is None:
            size = int(self.fs.info(src)["size"])
        if size <= COPY_OBJECT_LIMIT:
            src_bucket, src_key, _ = self.fs.split_path(src)
            dst_bucket, dst_key, _ = self.fs.split_path(dst)
            kwargs: dict[str, Any] = {"CopySource": {"Bucket": src_bucket, "Key": src_key}}
            if if_match:
                kwargs["CopySourceIfMatch"] = if_match
            answer = self.fs.call_s3("copy_object", Bucket=dst_bucket, Key=dst_key, **kwargs)
            self.fs.invalidate_cache(dst)
            etag = (answer.get("CopyObjectResult") or {}).get("ETag")
            return str(etag) if etag else None
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

    def _rename(self, src: str, dst: str) -> None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(src).replace(dst)
        self._prune_staging(Path(src).parent)

    def _prune_staging(self, folder: Path) -> None:
        """Remove the empty folders a commit left under ``_staging/`` (``file://``), ``_staging`` too.

        Only empty folders go (``rmdir``); a folder another writer is filling stays.
        """
        root = Path(self.path(STAGING))
        while folder == root or folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone: then its parent may be empty)
                if folder.exists():
                    return
            if folder == root:
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
    def publishing(self, final: str, *, resume: bool = False, info: dict[str, Any] | None = None) -> Iterator[str]:
        """Stage a directory output and commit it on success.

        Yields the relative staging path to write into. On normal exit the staged tree
        becomes visible at ``final`` with a ``_SUCCESS`` marker holding ``info``; on an
        exception nothing becomes visible and the staged files stay for a resumed run
        (``resume=True``) or are cleared by the next run (``resume=False``).
        """
        final = final.strip("/")
        stage = self.paths.staging(final)
        if not resume:
            self.rm(stage, recursive=True)
        if self.protocol == "file":
            self.fs.makedirs(self.path(stage), exist_ok=True)
        commit = dict(info or {})
        yield stage
        self.commit(stage, final, commit)

    def commit(self, stage: str, final: str, info: dict[str, Any] | None = None) -> None:
        """Make ``stage`` visible at ``final`` (replacing an unpublished leftover there)."""
        marker = json.dumps(info or {}, indent=2, sort_keys=True, default=str).encode()
        if self.is_published(final):
            raise LakeError(f"{self.url(final)!r} is already published; it is immutable")
        if self.protocol == "file":
            src, dst = Path(self.path(stage)), Path(self.path(final))
            (src / COMMIT_MARKER).write_bytes(marker)
            if dst.exists():  # an unpublished leftover
                self.fs.rm(str(dst), recursive=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)  # one rename: the whole tree appears at once
            self._prune_staging(src.parent)
            return
        # S3: copy every staged object into place, one after the other (rclone's server fails
        # concurrent writes that create files in one new folder), then write the marker last.
        self.fs.invalidate_cache()
        src_root = self.path(stage)
        for obj, entry in self.fs.find(src_root, detail=True).items():
            tail = obj[len(src_root) + 1 :]
            if tail != COMMIT_MARKER:
                self.copy_object(obj, f"{self.path(final)}/{tail}", int(entry.get("size") or 0))
        self.write_bytes(f"{final}/{COMMIT_MARKER}", marker)
        self.rm(stage, recursive=True)

    def unpublish(self, final: str) -> None:
        """Remove a published directory (marker first, so readers stop seeing it at once)."""
        self.rm(f"{final.strip('/')}/{COMMIT_MARKER}")
        self.rm(final, recursive=True)


def open_lake(settings: Settings | None = None) -> Lake:
    from pipelines.settings import get_settings

    return Lake(settings or get_settings())
