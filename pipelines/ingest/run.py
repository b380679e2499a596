"""``ingest(settings, uri)``: an upload becomes ``raw/<id>.h5ad`` and ``zarr/<id>.zarr``.

Steps: locate the upload and hash it (the dataset id; an S3 upload is spooled to a local
file by the same read, and nothing reads it from the store again when the cluster's
workers can read that file: a local cluster's, or another cluster's on this host); if
that dataset is published, stop (nothing is computed twice). Otherwise
inspect the file (refusing unusable ones with ``InputError`` before anything is copied),
copy it to ``raw/`` and verify the copy, convert it part by part with Dask tasks into a
staged Zarr store (:mod:`pipelines.ingest.store`), publish the store atomically, write the
obs table (:mod:`pipelines.ingest.cells`), and only then remove the upload from ``incoming/``.

A crashed run leaves nothing visible: the store is staged (under ``_staging/``, or on S3
at its final path without its ``_SUCCESS`` marker) and parts finished before the crash are
kept there, so running again converts only what is left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipelines.dask_cluster import INGEST_MODULES, start_fork_server
from pipelines.errors import InputError, LakeError
from pipelines.ingest import raw
from pipelines.ingest.cells import commit_cells, stage_cells, write_cells
from pipelines.ingest.store import convert, transpose_scratch
from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

# The conversion's modules (anndata, zarr, h5py, pandas: seconds to import) are imported
# where they are used, so that an ingest can start hashing and start its workers first.

log = get_logger(__name__)


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
    if client is None:
        start_fork_server(settings, preload=INGEST_MODULES)  # its imports run while the upload is hashed
    lake = Lake(settings)
    try:
        up = raw.resolve_upload(lake, uri)
        return _ingest(settings, lake, up, client)
    except InputError as e:
        if not any(uri in n for n in getattr(e, "__notes__", [])):
            e.add_note(f"upload: {uri}")
        raise


@dataclass
class _Run:
    """What the phases of one ingest share: the settings and lake, the upload, the Dask client
    (``None`` until a cluster is needed), the I/O thread, the spool file, how to let a started
    cluster go, timings and the start time."""

    settings: Settings
    lake: Lake
    up: raw.Upload
    client: Any
    local_cluster: bool
    threads: ThreadPoolExecutor
    spool: Path | None = None  # the local copy of an S3 upload made by the hash pass
    release_cluster: Callable[[], None] | None = None  # once the parts are written: a cluster started here shuts down
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def timed(self, name: str, func: Any, *args: Any) -> Any:
        t = time.perf_counter()
        out = func(*args)
        self.timings[name] = time.perf_counter() - t
        return out


def _workers_read_spool(run: _Run, size: int) -> bool:
    """Whether the conversion's workers can read the spool file: a local cluster's can; on
    another cluster every worker is asked (one ``client.run``), and a single no means the tasks
    read the upload from the store."""
    if run.local_cluster:
        return True
    if callable(run.client) and not hasattr(run.client, "submit"):
        run.client = run.client()  # a client still starting (BackgroundClient.get)
    seen = run.client.run(raw.spool_readable, str(run.spool), size)
    readable = bool(seen) and all(seen.values())
    log.info(
        "the conversion's %d Dask worker(s) read %s from %s",
        len(seen),
        run.up.uri,
        "this host's copy of it" if readable else "the store (they cannot read this host's copy)",
    )
    return readable


def _ingest(settings: Settings, lake: Lake, up: raw.Upload, client: Any) -> IngestResult:
    local_cluster = client is None and not settings.dask_address
    # An S3 upload is read from the store once, by the hash pass, into a local file that the
    # inspection reads, and the conversion's tasks too where their workers can read it (a
    # local cluster's always; another cluster's when each of its workers finds the file).
    spool = raw.spool_for(lake, up)
    with contextlib.ExitStack() as stack:
        stack.callback(raw.drop_spool, spool)

        started: list[Any] = []  # the BackgroundClient this ingest started, if any

        def start_cluster() -> Any:
            from pipelines.dask_cluster import BackgroundClient

            started.append(stack.enter_context(BackgroundClient(settings, preload=INGEST_MODULES)))
            return started[-1].get

        def release_cluster() -> None:  # once the parts are written: it shuts down while the store is published
            for background in started:
                background.close_soon()

        threads = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="sclake-ingest-io"))
        run = _Run(settings, lake, up, client, local_cluster, threads, spool, release_cluster)
        hashing = threads.submit(run.timed, "hash", raw.fingerprint, lake, up, spool)
        if client is None and not _may_be_a_reupload(lake, up):
            # The local cluster boots (its workers fork from the server started in ingest()) and
            # the driver's modules load while the upload is hashed; hashlib and file reads
            # release the GIL, so the hash runs beside them. On S3 the hash pass needs no s3fs,
            # which the listing here loads meanwhile.
            run.client = start_cluster()
        _load_conversion_modules()
        fp = hashing.result()
        if lake.is_published(PATHS.zarr(fp.dataset_id)):
            return _already(run, fp)
        if run.client is None:  # a raw copy had the upload's size, but other bytes
            run.client = start_cluster()
        return _convert_upload(run, fp)


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


def _convert_upload(run: _Run, fp: raw.Fingerprint) -> IngestResult:
    from pipelines.ingest.source import inspect_source

    lake, up, timings = run.lake, run.up, run.timings
    dataset_id, sha = fp.dataset_id, fp.sha256
    zrel, raw_rel = PATHS.zarr(dataset_id), PATHS.raw(dataset_id)
    url, opts = raw.read_location(lake, up, run.spool)
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
    # Workers read the upload itself when they can reach it (a lake object, its spool file or
    # a local file with a local cluster), so that the conversion runs while the raw copy is
    # made and verified; the store is committed only once the copy is verified.
    read_upload = up.local is None or run.local_cluster
    raw_copy = run.threads.submit(run.timed, "raw_copy", raw.store_raw, lake, up, fp)
    if read_upload:
        if run.spool is not None and not _workers_read_spool(run, fp.size):
            url, opts = raw.read_location(lake, up)  # the object in the store
        spec = replace(spec, url=url, storage_options=opts)
    else:
        raw_copy.result()
        spec = replace(spec, url=lake.url(raw_rel), storage_options=lake.storage_options)
    t = time.perf_counter()
    cells: list[tuple[str, int] | None] = []  # filled by convert() before it publishes the store

    def table_of_cells(client: Any, store: str) -> None:  # built by the cluster, from the finished store
        cells.append(stage_cells(lake, dataset_id, store, client=client))

    try:
        n_parts = convert(
            run.settings,
            lake,
            spec,
            dataset_id,
            sha,
            client=run.client,
            after_parts=run.release_cluster,
            before_commit=raw_copy.result,
            with_cluster=table_of_cells,
        )
    except InputError:
        with contextlib.suppress(Exception):
            raw_copy.result()
        if up.rel != raw_rel:
            lake.rm(raw_rel)  # a rejected file is no accepted original
        lake.discard_unpublished(zrel, in_place=True)
        lake.rm(transpose_scratch(dataset_id), recursive=True)
        raise
    timings["convert"] = time.perf_counter() - t
    commit_cells(lake, dataset_id, cells[0])
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
        time.perf_counter() - run.t0,
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


def _already(run: _Run, fp: raw.Fingerprint) -> IngestResult:
    lake, up = run.lake, run.up
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
        time.perf_counter() - run.t0,
    )
