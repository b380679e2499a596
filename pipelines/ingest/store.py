"""The Zarr store of one upload: planned in parts, converted on Dask, published whole.

:func:`convert` writes ``zarr/<dataset_id>.zarr`` from a :class:`~pipelines.ingest.source.SourceSpec`.
The store is staged with the plan it is being converted from (:data:`PLAN_ATTR`): under
``_staging/`` on ``file://``, renamed at the commit; at its final path on S3, where the
commit is the ``_SUCCESS`` marker alone (:meth:`Lake.stage_path`, no copy of the store).
Each part is a Dask task (:mod:`pipelines.ingest.convert`) that writes one row range,
parts already complete after a crash are kept, column-major sources are transposed
through a scratch folder first, and the store is committed only once every part is
written (and ``before_commit`` has not raised). Called by the ingest step
(:mod:`pipelines.ingest.run`).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from pipelines import __version__
from pipelines.dask_cluster import INGEST_MODULES
from pipelines.errors import InputError
from pipelines.lake import PATHS, Lake
from pipelines.logs import Progress, get_logger
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.ingest.source import SourceSpec

log = get_logger(__name__)

PLAN_ATTR = "sclake-ingest-plan"  # root attribute of a staged store: what it is being converted from


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


def convert(
    settings: Settings,
    lake: Lake,
    spec: SourceSpec,
    dataset_id: str,
    sha: str,
    *,
    client: Any = None,
    after_parts: Any = None,
    before_commit: Any = None,
    with_cluster: Any = None,
) -> int:
    """Convert the source into ``zarr/<dataset_id>.zarr`` (staged, resumed, published); returns the part count.

    ``client`` is a Dask client, a callable returning one (called only if parts remain), or
    ``None`` for one from :func:`pipelines.dask_cluster.dask_client`. ``after_parts``, if
    given, is called once the cluster's work is done (every part written), so that the
    caller can let its cluster go while the store is published. ``before_commit``, if
    given, is called once every part is written, before the store is published (it may
    raise to prevent the publication). ``with_cluster``, if given, is called as
    ``with_cluster(client, stage)`` once the store is complete but unpublished (``stage`` its
    lake path), while the cluster is still held, before ``after_parts``.
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
    with lake.publishing(zrel, resume=True, info=commit_info, in_place=True) as stage:
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
            if with_cluster is not None:
                with_cluster(client, stage)
        if after_parts is not None:
            after_parts()
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
