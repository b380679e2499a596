"""Quarantine: rejected uploads, kept byte-identical with a reason a user can act on.

``quarantine/<dataset_id>/`` holds the original file (under its upload name) and
``reason.json``::

    {"encoding-type": "sclake-quarantine-reason", "encoding-version": "0.1.0",
     "dataset_id": "...", "source": "incoming/lab/sample.h5ad", "file": "sample.h5ad",
     "sha256": "...", "size": 123, "stage": "validate", "code": "not_raw_counts",
     "reason": "X holds non-integer values ...", "hint": "Upload raw UMI counts, ...",
     "failed_checks": ["not_raw_counts"], "sclake_version": "0.1.0"}

Moving a file there copies it, verifies the copy's SHA-256, writes ``reason.json``, and
only then removes the original from ``raw/`` and ``incoming/`` together with what ingest
made of it (the Zarr store, the obs Parquet). Every step can run again: a crash leaves
the file in at least one place, and a rerun ends with it in exactly one.

:func:`release` reverses it: the file (fixed in place, or as it was) goes back to
``incoming/`` for the pipeline to pick up, and the quarantine folder is removed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import __version__
from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake, check_dataset_id
from pipelines.logs import get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

REASON_FILE = "reason.json"
REASON_ENCODING = {"encoding-type": "sclake-quarantine-reason", "encoding-version": "0.1.0"}
RELEASE_FILE = "released.json"


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined upload, as ``sclake quarantine list`` shows it."""

    dataset_id: str
    file: str
    code: str
    reason: str
    hint: str
    source: str
    size: int

    @property
    def path(self) -> str:
        return f"{PATHS.quarantine(self.dataset_id)}/{self.file}"


def reason_path(dataset_id: str) -> str:
    return f"{PATHS.quarantine(dataset_id)}/{REASON_FILE}"


def is_quarantined(lake: Lake, dataset_id: str) -> bool:
    return lake.exists(reason_path(dataset_id))


def _remove_if_same(lake: Lake, rel: str, sha: str) -> bool:
    """Remove ``rel`` if it holds the bytes with SHA-256 ``sha``; never removes other content."""
    if not lake.exists(rel):
        return False
    if lake.sha256(rel) != sha:
        log.warning("not removing %s: its bytes differ from the quarantined file", lake.url(rel))
        return False
    lake.rm(rel)
    return True


def _drop_products(lake: Lake, dataset_id: str) -> None:
    """Remove what ingest made of a rejected upload (published or half-written)."""
    for final in (PATHS.zarr(dataset_id), PATHS.cells(dataset_id)):
        lake.unpublish(final)
        lake.rm(PATHS.staging(final), recursive=True)


def quarantine(
    settings: Settings,
    dataset_id: str,
    reason: dict[str, Any],
    source_rel: str | None = None,
    *,
    local_file: str | Path | None = None,
    file_name: str | None = None,
    upload_rel: str | None = None,
) -> str:
    """Move an upload to ``quarantine/<dataset_id>/`` with ``reason.json``; returns the quarantined path.

    Parameters
    ----------
    settings : Settings
    dataset_id : str
        The upload's dataset id (first 16 hex digits of its SHA-256).
    reason : dict
        ``code``, ``reason``, ``hint`` and optionally ``failed_checks``, ``stage``, ``report``.
    source_rel : str, optional
        Lake path of the original bytes: ``raw/<id>.h5ad`` after ingest, or the upload in
        ``incoming/`` when ingest failed before copying it.
    local_file : path, optional
        A local file holding the original bytes (an upload that never reached the lake);
        it is copied, never removed.
    file_name : str, optional
        Name of the file in quarantine (default: the upload's base name).
    upload_rel : str, optional
        The upload's path in ``incoming/``, recorded as ``source`` and removed too.

    Raises
    ------
    LakeError
        No source holds the bytes, or the copy's SHA-256 differs from the original's.
    """
    check_dataset_id(dataset_id)
    lake = Lake(settings)
    folder = PATHS.quarantine(dataset_id)
    origin = upload_rel or source_rel or (str(local_file) if local_file else None)
    name = file_name or posixpath.basename(str(origin or f"{dataset_id}.h5ad")) or f"{dataset_id}.h5ad"
    if name == REASON_FILE:
        name = f"{dataset_id}-{name}"
    dest = f"{folder}/{name}"
    sources = [s for s in (source_rel, upload_rel, PATHS.raw(dataset_id)) if s]
    present = [s for s in dict.fromkeys(sources) if lake.exists(s)]
    if present:
        sha = lake.sha256(present[0])
        if not (lake.exists(dest) and lake.sha256(dest) == sha):
            lake.copy(present[0], dest)
    elif local_file is not None and Path(local_file).is_file():
        sha = _local_sha256(Path(local_file))
        if not (lake.exists(dest) and lake.sha256(dest) == sha):
            lake.put(local_file, dest)
    elif lake.exists(dest):  # a rerun after the originals were already removed
        sha = lake.sha256(dest)
    else:
        raise LakeError(
            f"cannot quarantine dataset {dataset_id!r}: none of {sources!r} exists in {lake.uri!r}"
            + (f" and {str(local_file)!r} is not a file" if local_file else "")
        )
    copied = lake.sha256(dest)
    if copied != sha:
        lake.rm(dest)
        raise LakeError(f"quarantine copy {lake.url(dest)!r} has SHA-256 {copied[:16]}…, the original {sha[:16]}…")
    if not sha.startswith(dataset_id):
        log.warning("quarantined file %s has SHA-256 %s…, not dataset id %s", dest, sha[:16], dataset_id)
    record = {
        **REASON_ENCODING,
        "dataset_id": dataset_id,
        "source": upload_rel or source_rel or (str(local_file) if local_file else None),
        "file": name,
        "sha256": sha,
        "size": lake.size(dest),
        "stage": reason.get("stage", "validate"),
        "code": reason.get("code", "invalid_input"),
        "reason": reason.get("reason", ""),
        "hint": reason.get("hint", ""),
        "failed_checks": list(reason.get("failed_checks") or [reason.get("code", "invalid_input")]),
        "report": reason.get("report"),
        "sclake_version": __version__,
    }
    lake.write_json(reason_path(dataset_id), record)
    for rel in dict.fromkeys(sources):
        _remove_if_same(lake, rel, sha)
    _drop_products(lake, dataset_id)
    log.warning("quarantined %s as %s: [%s] %s", record["source"], lake.url(dest), record["code"], record["reason"])
    return dest


def _local_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def read_reason(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """The ``reason.json`` of a quarantined dataset; :class:`LakeError` if it is not in quarantine."""
    lake = Lake(settings)
    rel = reason_path(check_dataset_id(dataset_id))
    if not lake.exists(rel):
        raise LakeError(f"dataset {dataset_id!r} is not in quarantine ({lake.url(PATHS.quarantine(dataset_id))!r})")
    return lake.read_json(rel)


def list_quarantine(settings: Settings) -> list[QuarantineEntry]:
    """Every quarantined upload, by dataset id."""
    lake = Lake(settings)
    entries = []
    for rel in lake.ls(PATHS.quarantine_dir, recursive=True, suffix=f"/{REASON_FILE}"):
        r = lake.read_json(rel)
        dataset_id = rel.split("/")[-2]
        file_rel = f"{PATHS.quarantine(dataset_id)}/{r.get('file', '')}"
        entries.append(
            QuarantineEntry(
                dataset_id=dataset_id,
                file=str(r.get("file", "")),
                code=str(r.get("code", "")),
                reason=str(r.get("reason", "")),
                hint=str(r.get("hint", "")),
                source=str(r.get("source") or ""),
                size=lake.size(file_rel) if lake.exists(file_rel) else 0,
            )
        )
    return sorted(entries, key=lambda e: e.dataset_id)


def release(settings: Settings, dataset_id: str, *, to: str | None = None) -> str:
    """Put a quarantined upload back into ``incoming/`` so that the pipeline picks it up again.

    The file goes back as it is now in ``quarantine/<dataset_id>/`` (fixed in place, or
    unchanged), under ``incoming/<file name>`` (``incoming/<dataset_id>-<file name>`` if
    another file already has that name) or the lake path ``to``. Its quarantine folder is
    removed once the copy is verified; the reason is kept as ``reports/<id>/released.json``.

    Returns
    -------
    str
        The lake path the file was released to.
    """
    lake = Lake(settings)
    record = read_reason(settings, dataset_id)
    folder = PATHS.quarantine(dataset_id)
    src = f"{folder}/{record['file']}"
    if not lake.exists(src):
        raise LakeError(f"quarantined file {lake.url(src)!r} is missing; reason.json names {record['file']!r}")
    dest = to.strip("/") if to else f"{PATHS.incoming}/{record['file']}"
    if not dest.startswith(PATHS.incoming + "/"):
        raise LakeError(f"release target {dest!r} must be inside {PATHS.incoming + '/'!r}")
    sha = lake.sha256(src)
    if lake.exists(dest) and lake.sha256(dest) != sha:
        if to:
            raise LakeError(f"{lake.url(dest)!r} already holds another file; choose another target")
        dest = f"{PATHS.incoming}/{dataset_id}-{record['file']}"
    lake.copy(src, dest)
    if lake.sha256(dest) != sha:
        lake.rm(dest)
        raise LakeError(f"release copy {lake.url(dest)!r} differs from {lake.url(src)!r}; quarantine kept")
    lake.write_json(
        f"{PATHS.reports(dataset_id)}/{RELEASE_FILE}",
        {**record, "released_to": dest, "released_sha256": sha, "modified": sha != record.get("sha256")},
    )
    lake.rm(folder, recursive=True)
    log.info("released %s to %s", lake.url(src), lake.url(dest))
    return dest
