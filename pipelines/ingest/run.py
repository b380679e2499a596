"""``ingest(settings, uri)``: an upload becomes ``raw/<id>.h5ad`` and ``zarr/<id>.zarr``.

Steps: locate the upload and hash it (the dataset id); if that dataset is published,
stop (nothing is computed twice). Otherwise inspect the file (refusing unusable ones
with ``InputError`` before anything is copied), copy it to ``raw/`` and verify the copy,
convert it part by part with Dask tasks into a staged Zarr store, publish the store
atomically, and only then remove the upload from ``incoming/``.

A crashed run leaves nothing visible: the store is staged under ``_staging/`` and parts
finished before the crash are kept there, so running again converts only what is left.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipelines import __version__
from pipelines.dask_cluster import INGEST_MODULES, start_fork_server
from pipelines.errors import InputError, LakeError
from pipelines.ingest import raw
from pipelines.ingest.cells import write_cells
from pipelines.lake import PATHS, Lake
from pipelines.logs import Progress, get_logger
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.ingest.source import SourceSpec

# The conversion's modules (anndata, zarr, h5py, pandas: seconds to import) are imported
# where they are used, so that an ingest can start hashing and start its workers first.

log = get_logger(__name__)

PLAN_ATTR = "sclake-ingest-plan"  # root attribute of a staged store: what it is being converted from


@dataclass(frozen=True)
class IngestResult:
    """What ``ingest`` did. ``already`` is true when the same bytes were ingested before."""

    dataset_id: str
    zarr_uri: str
    raw_uri: str
    n_obs: int
    n_vars: int
    n_parts: int
    counts_source: str
    gene_id_source: str | None
    already: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (hash, raw_copy, convert)

    @property
    def cells_per_second(self) -> float:
        return self.n_obs / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "cells_per_second": round(self.cells_per_second, 1)}


def transpose_scratch(dataset_id: str) -> str:
    """Scratch prefix of the CSC transposition, beside the staged store (never published)."""
    return f"{PATHS.staging(PATHS.zarr(dataset_id))}.transpose"


def plan_parts(n_obs: int, part_cells: int) -> list[tuple[int, int, int]]:
    """``[(index, start, stop), …]``: consecutive row ranges of at most ``part_cells`` rows.

    As few parts as that allows, of equal size (they differ by one row at most): no short
    last part, so that the tasks that write them, and later the embedding of each, are
    of even weight. 50,000 cells at 16,384 make 4 parts of 12,500.
    """
    if n_obs <= 0:
        return []
    n = -(-n_obs // part_cells)
    bounds = [i * n_obs // n for i in range(n + 1)]
    return [(i, bounds[i], bounds[i + 1]) for i in range(n)]


def ingest(settings: Settings, uri: str, *, client: Any = None) -> IngestResult:
    """Ingest one upload; returns the dataset id and what was written.

    Parameters
    ----------
    settings
        Lake, Dask and part/shard sizes (``part_cells``, ``shard_cells``).
    uri
        ``s3://…`` or ``file://…`` URI, a key relative to the lake (``incoming/x.h5ad``) or
        a local path (uploaded into ``raw/``).
    client
        A Dask ``Client`` to use; default: one from :func:`pipelines.dask_cluster.dask_client`,
        started only when there is something to convert.

    Raises
    ------
    InputError
        The file is missing, not an HDF5 ``.h5ad``, truncated, has no count matrix or no raw
        counts, or uses an unsupported encoding. The URI is attached as a note; the upload is
        left where it was and nothing of it stays in ``raw/`` or ``zarr/``.
    LakeError
        The lake cannot be written, or a raw copy does not verify.
    """
    lake = Lake(settings)
    if client is None:
        start_fork_server(settings, preload=INGEST_MODULES)  # its imports run while the upload is hashed
    try:
        up = raw.resolve_upload(lake, uri)
        return _ingest(settings, lake, up, client)
    except InputError as e:
        if not any(uri in n for n in getattr(e, "__notes__", [])):
            e.add_note(f"upload: {uri}")
        raise


def _ingest(settings: Settings, lake: Lake, up: raw.Upload, client: Any) -> IngestResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    local_cluster = client is None and not settings.dask_address
    with contextlib.ExitStack() as stack:

        def start_cluster() -> Any:
            from pipelines.dask_cluster import BackgroundClient

            return stack.enter_context(BackgroundClient(settings, preload=INGEST_MODULES)).get

        if client is None and not _may_be_a_reupload(lake, up):
            # The local cluster boots (its workers fork from the server started in ingest()) and
            # the driver's modules load while the upload is hashed; hashlib and file reads
            # release the GIL, so the hash runs beside them.
            client = start_cluster()
        threads = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="sclake-ingest-io"))
        hashing = threads.submit(_timed, timings, "hash", raw.fingerprint, lake, up)
        _load_conversion_modules()
        fp = hashing.result()
        if lake.is_published(PATHS.zarr(fp.dataset_id)):
            return _already(lake, up, fp, t0)
        if client is None:  # a raw copy had the upload's size, but other bytes
            client = start_cluster()
        return _convert_upload(settings, lake, up, client, local_cluster, fp, threads, timings, t0)


def _may_be_a_reupload(lake: Lake, up: raw.Upload) -> bool:
    """Whether some ``raw/`` original has the upload's size: only then can its bytes have been
    ingested before, and only then is the cluster's start left until the hash has said."""
    try:
        size = raw.size(lake, up)
        entries = lake.fs.ls(lake.path(PATHS.raw_dir), detail=True)
    except OSError:  # FileNotFoundError included: no raw/ yet
        return False
    return any(e.get("type") == "file" and int(e.get("size") or -1) == size for e in entries)


def _load_conversion_modules() -> None:
    """What the driver itself uses: zarr and h5py (anndata, pandas and scipy only run in tasks)."""
    import pipelines.dataset  # noqa: F401
    import pipelines.ingest.source  # noqa: F401
    import pipelines.ingest.writer  # noqa: F401


def _convert_upload(
    settings: Settings,
    lake: Lake,
    up: raw.Upload,
    client: Any,
    local_cluster: bool,
    fp: raw.Fingerprint,
    threads: ThreadPoolExecutor,
    timings: dict[str, float],
    t0: float,
) -> IngestResult:
    from pipelines.ingest.source import inspect_source

    dataset_id, sha = fp.dataset_id, fp.sha256
    zrel, raw_rel = PATHS.zarr(dataset_id), PATHS.raw(dataset_id)
    url, opts = raw.read_location(lake, up)
    spec = inspect_source(url, opts)
    log.info(
        "ingest %s as %s: %d cells x %d genes, counts in %s (%s), gene ids in %s",
        up.uri,
        dataset_id,
        spec.n_obs,
        spec.n_vars,
        spec.counts_key,
        spec.layout,
        spec.gene_id_source,
    )
    # Workers read the upload itself when they can reach it (a lake object, or a local file
    # and a local cluster), so that the conversion runs while the raw copy is made and
    # verified; the store is committed only once the copy is verified.
    read_upload = up.local is None or local_cluster
    raw_copy = threads.submit(_timed, timings, "raw_copy", raw.store_raw, lake, up, fp)
    if read_upload:
        spec = replace(spec, url=url, storage_options=opts)
    else:
        raw_copy.result()
        spec = replace(spec, url=lake.url(raw_rel), storage_options=lake.storage_options)
    t = time.perf_counter()
    try:
        n_parts = convert(settings, lake, spec, dataset_id, sha, client=client, before_commit=raw_copy.result)
    except InputError:
        with contextlib.suppress(Exception):
            raw_copy.result()
        if up.rel != raw_rel:
            lake.rm(raw_rel)  # a rejected file is no accepted original
        lake.rm(PATHS.staging(zrel), recursive=True)
        lake.rm(transpose_scratch(dataset_id), recursive=True)
        raise
    timings["convert"] = time.perf_counter() - t
    write_cells(lake, dataset_id)
    raw.remove_upload(lake, up)
    result = IngestResult(
        dataset_id,
        lake.url(zrel),
        lake.url(raw_rel),
        spec.n_obs,
        spec.n_vars,
        n_parts,
        spec.counts_key,
        spec.gene_id_source,
        False,
        time.perf_counter() - t0,
        {k: round(v, 3) for k, v in timings.items()},
    )
    log.info(
        "ingested %s: %s cells in %.1fs (%.0f cells/s; %s)",
        dataset_id,
        f"{spec.n_obs:,}",
        result.seconds,
        result.cells_per_second,
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return result


def _timed(timings: dict[str, float], name: str, func: Any, *args: Any) -> Any:
    t = time.perf_counter()
    out = func(*args)
    timings[name] = time.perf_counter() - t
    return out


def _already(lake: Lake, up: raw.Upload, fp: raw.Fingerprint, t0: float) -> IngestResult:
    dataset_id, sha = fp.dataset_id, fp.sha256
    zrel, raw_rel = PATHS.zarr(dataset_id), PATHS.raw(dataset_id)
    info = lake.commit_info(zrel)
    if info.get("source_sha256") not in (None, sha):
        raise LakeError(f"dataset {dataset_id} was published from other bytes (SHA-256 {info['source_sha256']!r})")
    if not lake.exists(raw_rel) or lake.size(raw_rel) != fp.size:
        raw.store_raw(lake, up, fp)  # the original went missing: restore it from the upload
    write_cells(lake, dataset_id)  # a run stopped between the store's commit and the table's
    raw.remove_upload(lake, up)
    log.info("%s is dataset %s, ingested before: nothing to do", up.uri, dataset_id)
    return IngestResult(
        dataset_id,
        lake.url(zrel),
        lake.url(raw_rel),
        int(info.get("n_obs", 0)),
        int(info.get("n_vars", 0)),
        int(info.get("n_parts", 0)),
        str(info.get("counts_source", "")),
        info.get("gene_id_source"),
        True,
        time.perf_counter() - t0,
    )


def convert(
    settings: Settings,
    lake: Lake,
    spec: SourceSpec,
    dataset_id: str,
    sha: str,
    *,
    client: Any = None,
    before_commit: Any = None,
) -> int:
    """Convert the source into ``zarr/<dataset_id>.zarr`` (staged, resumed, published); returns the part count.

    ``client`` is a Dask client, a callable returning one (called only if parts remain), or
    ``None`` for one from :func:`pipelines.dask_cluster.dask_client`. ``before_commit``, if
    given, is called once every part is written, before the store is published (it may
    raise to prevent the publication).
    """
    from pipelines.dataset import ENCODING, PARTS_GROUP, STATS_GROUP, open_store
    from pipelines.ingest.writer import part_is_complete

    zrel = PATHS.zarr(dataset_id)
    parts = plan_parts(spec.n_obs, settings.part_cells)
    plan = {
        "source_sha256": sha,
        "n_obs": spec.n_obs,
        "n_vars": spec.n_vars,
        "counts_key": spec.counts_key,
        "layout": spec.layout,
        "part_cells": settings.part_cells,
        "shard_cells": settings.shard_cells,
        "encoding-version": ENCODING["encoding-version"],
    }
    commit_info = {
        **ENCODING,
        "dataset_id": dataset_id,
        "source_sha256": sha,
        "n_obs": spec.n_obs,
        "n_vars": spec.n_vars,
        "n_parts": len(parts),
        "counts_source": spec.counts_key,
        "gene_id_source": spec.gene_id_source,
        "sclake_version": __version__,
    }
    with lake.publishing(zrel, resume=True, info=commit_info) as stage:
        stage_url = lake.url(stage)
        store = open_store(stage_url, lake.storage_options, read_only=False)
        root = _open_staged_root(store, plan)
        for name in (PARTS_GROUP, STATS_GROUP):  # created here: concurrent part tasks would race to create them
            root.require_group(name)
        done = {i: rec for i, a, b in parts if (rec := part_is_complete(root, i, a, b))}
        todo = [p for p in parts if p[0] not in done]
        if done:
            log.info("resuming %s: %d of %d parts were converted before", dataset_id, len(done), len(parts))
        with contextlib.ExitStack() as stack:
            if client is None:
                from pipelines.dask_cluster import dask_client

                client = stack.enter_context(dask_client(settings, preload=INGEST_MODULES))
            elif callable(client) and not hasattr(client, "submit"):
                client = client()  # a client still starting (BackgroundClient.get)
            # The genes (var, at the root) are written by a task too: the driver never needs anndata.
            done.update(_run_parts(client, settings, lake, spec, dataset_id, stage_url, parts, todo))
        records = [done[i] for i, _, _ in parts]
        root.attrs.put(_root_attrs(spec, dataset_id, sha, settings, records))
        if before_commit is not None:
            before_commit()
    return len(parts)


def _open_staged_root(store: Any, plan: dict[str, Any]):
    """The staged root group: kept when it was started for the same plan, else started afresh."""
    import zarr

    try:
        root = zarr.open_group(store, mode="r+", zarr_format=3)
        if dict(root.attrs).get(PLAN_ATTR) == plan:
            return root
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        pass
    return zarr.create_group(store, overwrite=True, zarr_format=3, attributes={PLAN_ATTR: plan})


def _run_parts(
    client: Any,
    settings: Settings,
    lake: Lake,
    spec: SourceSpec,
    dataset_id: str,
    stage_url: str,
    parts: list[tuple[int, int, int]],
    todo: list[tuple[int, int, int]],
) -> dict[int, dict[str, Any]]:
    from distributed import as_completed

    from pipelines.ingest.convert import convert_part, write_var

    token = uuid.uuid4().hex[:8]  # task keys only; nothing on disk depends on it
    scratch_rel = transpose_scratch(dataset_id)
    scratch_url = None
    if spec.layout == "csc" and todo:
        scratch_url = lake.url(scratch_rel)
        lake.rm(scratch_rel, recursive=True)
        _transpose(client, lake, spec, scratch_url, parts, token)
    progress = Progress(f"ingest {dataset_id}", total=spec.n_obs, unit="cells")
    progress.advance(sum(b - a for i, a, b in parts if (i, a, b) not in todo))
    futures = [
        client.submit(
            _task,
            convert_part,
            spec,
            stage_url,
            lake.storage_options,
            i,
            a,
            b,
            shard_cells=settings.shard_cells,
            scratch_url=scratch_url,
            key=f"sclake-ingest-{dataset_id}-{token}-part-{i:05d}",
            retries=1,
            pure=False,
        )
        for i, a, b in todo
    ]
    var_task = client.submit(
        _task,
        write_var,
        spec,
        stage_url,
        lake.storage_options,
        key=f"sclake-ingest-{dataset_id}-{token}-var",
        retries=1,
        pure=False,
    )
    records: dict[int, dict[str, Any]] = {}
    for fut in as_completed(futures, loop=client.loop):
        rec = _unwrap(fut.result())
        records[rec["index"]] = rec
        progress.advance(rec["stop"] - rec["start"])
        log.info(
            "part %d/%d: cells %d-%d, %s values, %.1fs",
            rec["index"] + 1,
            len(parts),
            rec["start"],
            rec["stop"],
            f"{rec['nnz']:,}",
            rec["seconds"],
        )
    _unwrap(var_task.result())
    progress.finish()
    if scratch_url is not None:
        lake.rm(scratch_rel, recursive=True)
    return records


def _transpose(client: Any, lake: Lake, spec: SourceSpec, scratch_url: str, parts: list, token: str) -> None:
    """First pass for CSC sources: column blocks bucketed by part into scratch files."""
    import numpy as np
    from distributed import as_completed

    from pipelines.ingest.convert import TRANSPOSE_BLOCK_VALUES, transpose_columns
    from pipelines.ingest.source import open_h5

    with open_h5(spec.url, spec.storage_options) as f:
        indptr = f[spec.counts_key]["indptr"][...].astype(np.int64)
    bounds = [a for _, a, _ in parts] + [spec.n_obs]
    blocks, start = [], 0
    while start < spec.n_vars:
        limit = indptr[start] + TRANSPOSE_BLOCK_VALUES
        stop = max(start + 1, int(np.searchsorted(indptr, limit, side="right")) - 1)
        stop = min(stop, spec.n_vars)
        blocks.append((start, stop))
        start = stop
    log.info("CSC source: transposing %d column blocks into %d parts", len(blocks), len(parts))
    futures = [
        client.submit(
            _task,
            transpose_columns,
            spec,
            scratch_url,
            lake.storage_options,
            k,
            a,
            b,
            bounds,
            key=f"sclake-transpose-{token}-{k:05d}",
            retries=1,
            pure=False,
        )
        for k, (a, b) in enumerate(blocks)
    ]
    for fut in as_completed(futures, loop=client.loop):
        _unwrap(fut.result())


def _task(func, *args, **kwargs) -> dict[str, Any]:
    """Run a task; an ``InputError`` comes back as data (its reason, hint and code survive pickling).

    Afterwards, the task's buffers being garbage, the worker's heap is trimmed."""
    from pipelines.ingest.convert import release_memory

    try:
        return {"ok": func(*args, **kwargs)}
    except InputError as e:
        return {
            "input_error": {
                "reason": e.reason,
                "hint": e.hint,
                "code": e.code,
                "notes": list(getattr(e, "__notes__", [])),
            }
        }
    finally:
        release_memory()


def _unwrap(out: dict[str, Any]) -> Any:
    if "input_error" in out:
        err = out["input_error"]
        e = InputError(err["reason"], err["hint"], code=err["code"])
        for note in err["notes"]:
            e.add_note(note)
        raise e
    return out["ok"]


def _root_attrs(
    spec: SourceSpec, dataset_id: str, sha: str, settings: Settings, records: list[dict[str, Any]]
) -> dict[str, Any]:
    from pipelines.dataset import ENCODING

    return {
        **ENCODING,
        "dataset_id": dataset_id,
        "n_obs": spec.n_obs,
        "n_vars": spec.n_vars,
        "nnz": int(sum(r["nnz"] for r in records)),
        "parts": [{k: int(r[k]) for k in ("index", "start", "stop", "nnz")} for r in records],
        "counts_source": spec.counts_key,
        "gene_id_source": spec.gene_id_source,
        "source_sha256": sha,
        "source_layout": spec.layout,
        "source_dtype": spec.dtype,
        "counts_summary": {
            "max": float(max((r["max"] for r in records), default=0.0)),
            "negative": int(sum(r["negative"] for r in records)),
            "non_integer": int(sum(r["non_integer"] for r in records)),
        },
        "part_cells": settings.part_cells,
        "shard_cells": settings.shard_cells,
        "sclake_version": __version__,
    }
