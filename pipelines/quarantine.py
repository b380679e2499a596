"""Quarantine: rejected uploads, kept byte-identical with a reason a user can act on.

``quarantine/<dataset_id>/`` holds the original file (under its upload name) and
``reason.json``::

    {"encoding-type": "sclake.quarantine-reason", "encoding-version": "0.1.0",
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

import hashlib
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import __version__, formats
from pipelines.errors import InputError, LakeError
from pipelines.lake import HASH_BLOCK, PATHS, Lake, LakeKeyError, check_dataset_id, lake_key
from pipelines.logs import get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

REASON_FILE = "reason.json"
REASON_ENCODING = formats.encoding("quarantine-reason")
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


def _is_key_under(rel: str, prefix: str = "") -> bool:
    """Whether ``rel`` is a canonical lake key under ``prefix`` (the lake root by default):
    the only paths quarantine removes."""
    try:
        return lake_key(rel, prefix) == rel
    except LakeKeyError:
        return False


def _remove_if_same(lake: Lake, rel: str, sha: str) -> bool:
    """Remove ``rel`` if it holds the bytes with SHA-256 ``sha``; never removes other content."""
    if not lake.exists(rel):
        return False
    if lake.sha256(rel) != sha:
        log.warning("not removing %s: its bytes differ from the quarantined file", lake.url(rel))
        return False
    lake.rm(rel)
    return True


def _local_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _drop_products(lake: Lake, dataset_id: str) -> None:
    """Remove what ingest made of a rejected upload (published or half-written)."""
    for final in (PATHS.zarr(dataset_id), PATHS.cells(dataset_id)):
        lake.unpublish(final)
        lake.rm(PATHS.staging(final), recursive=True)


def _copy_verified(
    lake: Lake, dataset_id: str, dest: str, source_rel: str | None, local_file: str | Path | None
) -> str:
    """Copy the original bytes to ``dest`` (unless they are there already) and verify the copy;
    returns their SHA-256."""
    candidates = [s for s in dict.fromkeys((source_rel, PATHS.raw(dataset_id))) if s]
    present = [s for s in candidates if lake.exists(s)]
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
        where = f" nor {str(local_file)!r}" if local_file else ""
        raise LakeError(
            f"cannot quarantine dataset {dataset_id!r}: none of {candidates!r} exists in {lake.uri!r}{where}"
        )
    copied = lake.sha256(dest)
    if copied != sha:
        lake.rm(dest)
        raise LakeError(f"quarantine copy {lake.url(dest)!r} has SHA-256 {copied[:16]}…, the original {sha[:16]}…")
    return sha


def quarantine(
    settings: Settings,
    dataset_id: str,
    reason: dict[str, Any],
    source_rel: str | None = None,
    *,
    local_file: str | Path | None = None,
    file_name: str | None = None,
    upload: str | None = None,
    remove: tuple[str, ...] = (),
) -> QuarantineEntry:
    """Move an upload to ``quarantine/<dataset_id>/`` with ``reason.json``; returns its entry.

    Parameters
    ----------
    settings : Settings
    dataset_id : str
        The upload's dataset id (first 16 hex digits of its SHA-256).
    reason : dict
        ``code``, ``reason``, ``hint`` and optionally ``failed_checks``, ``stage``, ``report``.
    source_rel : str, optional
        Lake path of the original bytes: ``raw/<id>.h5ad`` after ingest, or the upload
        (e.g. under ``incoming/``) when ingest refused it before copying it.
    local_file : path, optional
        A local file holding the original bytes (an upload that never reached the lake);
        it is copied, never removed.
    file_name : str, optional
        Name of the file in quarantine (default: the base name of ``upload`` or the source).
    upload : str, optional
        The upload as the user gave it, recorded as ``source`` in ``reason.json``.
    remove : tuple of str
        More lake paths to remove once the copy is verified (only if they hold the same bytes).

    Once the copy is verified and ``reason.json`` written, ``raw/<dataset_id>.h5ad``,
    ``source_rel`` when it is under ``incoming/`` or ``raw/``, and ``remove`` are deleted
    (each only if it holds the same bytes, and only if it is a canonical lake key, with no
    ``..`` that could lead out of its folder), and so are the dataset's Zarr store and obs
    Parquet. Running it again finishes an interrupted run.

    Raises
    ------
    LakeError
        No source holds the bytes, or the copy's SHA-256 differs from the original's.
    """
    check_dataset_id(dataset_id)
    lake = Lake(settings)
    origin = upload or source_rel or (str(local_file) if local_file else None)
    name = posixpath.basename((file_name or str(origin or "")).rstrip("/"))
    if name in ("", ".", ".."):
        name = f"{dataset_id}.h5ad"
    if name == REASON_FILE:
        name = f"{dataset_id}-{name}"
    dest = lake_key(f"{PATHS.quarantine(dataset_id)}/{name}", PATHS.quarantine(dataset_id))
    sha = _copy_verified(lake, dataset_id, dest, source_rel, local_file)
    if not sha.startswith(dataset_id):
        log.warning("quarantined file %s has SHA-256 %s…, not dataset id %s", dest, sha[:16], dataset_id)
    code = reason.get("code") or "invalid_input"
    record = {
        **REASON_ENCODING,
        "dataset_id": dataset_id,
        "source": origin,
        "file": name,
        "sha256": sha,
        "size": lake.size(dest),
        "stage": reason.get("stage", "validate"),
        "code": code,
        "reason": reason.get("reason") or "",
        "hint": reason.get("hint") or "",
        "failed_checks": list(reason.get("failed_checks") or [code]),
        "report": reason.get("report"),
        "sclake_version": __version__,
    }
    lake.write_json(reason_path(dataset_id), record)
    owned = (PATHS.incoming, PATHS.raw_dir)
    doomed = [PATHS.raw(dataset_id), *(s for s in [source_rel] if s and any(_is_key_under(s, p) for p in owned))]
    doomed += [r for r in remove if _is_key_under(r)]
    for rel in dict.fromkeys(doomed):
        if rel != dest:
            _remove_if_same(lake, rel, sha)
    _drop_products(lake, dataset_id)
    log.warning("quarantined %s as %s: [%s] %s", origin, lake.url(dest), code, record["reason"])
    return _entry(dataset_id, record)


def _entry(dataset_id: str, record: dict[str, Any], size: int | None = None) -> QuarantineEntry:
    return QuarantineEntry(
        dataset_id=dataset_id,
        file=str(record.get("file", "")),
        code=str(record.get("code", "")),
        reason=str(record.get("reason", "")),
        hint=str(record.get("hint", "")),
        source=str(record.get("source") or ""),
        size=int(record.get("size", 0) if size is None else size),
    )


def quarantine_upload(settings: Settings, uri: str, error: InputError) -> QuarantineEntry:
    """Quarantine an upload that ingest refused (``error``: what was wrong, and the hint).

    ``uri`` is what ingest was given: a lake URI or key (an upload under ``incoming/`` is
    moved), an ``s3://`` object outside the lake or a local file (copied, left in place).
    Its dataset id is computed from its bytes.

    Raises
    ------
    InputError
        ``uri`` does not exist (code ``not_found``): there is nothing to quarantine.
    """
    from pipelines.ingest.raw import resolve_upload
    from pipelines.ingest.raw import sha256 as upload_sha256

    lake = Lake(settings)
    up = resolve_upload(lake, uri)
    sha = upload_sha256(lake, up)
    reason = {"stage": "ingest", "code": error.code, "reason": error.reason, "hint": error.hint}
    if up.fs_path is not None:  # same store, outside the lake: copy it in through a local file
        with tempfile.TemporaryDirectory(prefix="sclake-quarantine-") as tmp:
            local = Path(tmp) / up.name
            lake.fs.get_file(up.fs_path, str(local))
            return quarantine(settings, sha[:16], reason, local_file=local, file_name=up.name, upload=uri)
    return quarantine(settings, sha[:16], reason, up.rel, local_file=up.local, file_name=up.name, upload=uri)


def quarantine_dataset(
    settings: Settings, dataset_id: str, result: Any, *, upload: str | None = None
) -> QuarantineEntry:
    """Quarantine an ingested dataset that failed validation (``result``: a ``ValidationResult``).

    The original is ``raw/<dataset_id>.h5ad``. ``upload`` (the upload's key or URI; default:
    the one the ingest lineage record holds, if any) names the file in quarantine; if it is
    still under ``incoming/`` with the same bytes, it is removed too.
    """
    lake = Lake(settings)
    if not upload and lake.exists(PATHS.lineage_record(dataset_id)):
        upload = lake.read_json(PATHS.lineage_record(dataset_id)).get("upload_key")  # the upload's name, if recorded
    extra: tuple[str, ...] = ()
    if upload:
        try:
            from pipelines.ingest.raw import resolve_upload

            up = resolve_upload(lake, upload)
            extra = (up.rel,) if up.rel and _is_key_under(up.rel, PATHS.incoming) else ()
        except (InputError, LakeError):  # already moved to raw/ and removed: nothing more to remove
            pass
    reason = {
        "stage": "validate",
        "code": result.code,
        "reason": result.reason,
        "hint": result.hint,
        "failed_checks": list(result.failed_checks),
        "report": result.report or None,
    }
    name = posixpath.basename(upload.rstrip("/")) if upload else None
    return quarantine(
        settings, dataset_id, reason, PATHS.raw(dataset_id), file_name=name, upload=upload or None, remove=extra
    )


def read_reason(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """The ``reason.json`` of a quarantined dataset; :class:`LakeError` if it is not in quarantine."""
    lake = Lake(settings)
    rel = reason_path(check_dataset_id(dataset_id))
    if not lake.exists(rel):
        raise LakeError(f"dataset {dataset_id!r} is not in quarantine ({lake.url(PATHS.quarantine(dataset_id))!r})")
    reason = lake.read_json(rel)
    formats.check("quarantine-reason", reason, lake.url(rel))
    return reason


def list_quarantine(settings: Settings) -> list[QuarantineEntry]:
    """Every quarantined upload, by dataset id."""
    lake = Lake(settings)
    entries = []
    for rel in lake.ls(PATHS.quarantine_dir, recursive=True, suffix=f"/{REASON_FILE}"):
        r = lake.read_json(rel)
        dataset_id = rel.split("/")[-2]
        file_rel = f"{PATHS.quarantine(dataset_id)}/{r.get('file', '')}"
        entries.append(_entry(dataset_id, r, lake.size(file_rel) if lake.exists(file_rel) else 0))
    return sorted(entries, key=lambda e: e.dataset_id)


def release(settings: Settings, dataset_id: str, *, to: str | None = None) -> str:
    """Put a quarantined upload back into ``incoming/`` so that the pipeline picks it up again.

    The file goes back as it is now in ``quarantine/<dataset_id>/`` (fixed in place, or
    unchanged), under ``incoming/<file name>`` (``incoming/<dataset_id>-<file name>`` if
    another file already has that name) or the lake key ``to``, which is normalised and must
    lie under ``incoming/`` (see :func:`pipelines.lake.lake_key`). Its quarantine folder is
    removed once the copy is verified; the reason is kept as ``reports/<id>/released.json``.

    Returns
    -------
    str
        The lake path the file was released to.

    Raises
    ------
    LakeKeyError
        ``to`` is empty, a URI, or resolves outside ``incoming/``; nothing is copied.
    LakeError
        The dataset is not in quarantine, or ``to`` already holds another file.
    """
    target = None if to is None else lake_key(to, PATHS.incoming)  # before anything is read or written
    lake = Lake(settings)
    record = read_reason(settings, dataset_id)
    folder = PATHS.quarantine(dataset_id)
    name = posixpath.basename(str(record["file"]))
    src = lake_key(f"{folder}/{name}", folder)
    if not lake.exists(src):
        raise LakeError(f"quarantined file {lake.url(src)!r} is missing; reason.json names {record['file']!r}")
    dest = target or lake_key(f"{PATHS.incoming}/{name}", PATHS.incoming)
    sha = lake.sha256(src)
    if lake.exists(dest) and lake.sha256(dest) != sha:
        if target:
            raise LakeError(f"{lake.url(dest)!r} already holds another file; choose another target")
        dest = lake_key(f"{PATHS.incoming}/{dataset_id}-{name}", PATHS.incoming)
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
