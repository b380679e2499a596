"""Dask tasks of the conversion: each reads its own rows from the source and writes one part.

Tasks take small arguments (a :class:`SourceSpec`, the target URL and storage options,
row bounds) and return small dicts; no matrix ever passes through the scheduler.

CSR and dense sources are read row block by row block. A CSC source is stored column by
column, so rows cannot be read without touching every column: a first pass of
:func:`transpose_columns` tasks reads column blocks (bounded by a number of stored
values) and writes their entries, bucketed by part, to scratch files in the lake's
staging area; :func:`convert_part` then assembles a part from its buckets. For CSC
inputs a part task therefore holds one part's entries (``part_cells`` rows) at a time.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import InputError
from pipelines.ingest.source import SourceSpec, open_h5, read_csr_rows, read_obs_rows, read_var, row_block_size
from pipelines.ingest.writer import PartWriter

if TYPE_CHECKING:
    import scipy.sparse as sp

TRANSPOSE_BLOCK_VALUES = 8 * 1024 * 1024  # stored values per column block of a CSC source


def _open_root(url: str, storage_options: dict[str, Any]):
    import zarr

    from pipelines.dataset import open_store

    return zarr.open_group(open_store(url, storage_options, read_only=False), mode="r+", zarr_format=3)


def _fs(url: str, storage_options: dict[str, Any]):
    from fsspec.core import url_to_fs

    return url_to_fs(url, **storage_options)


def _read_error(spec: SourceSpec, what: str, e: Exception) -> InputError:
    err = InputError(
        f"could not read {what} of {spec.counts_key} ({e})", "upload the complete file again", code="unreadable"
    )
    err.add_note(f"file: {spec.url}")
    return err


def convert_part(
    spec: SourceSpec,
    target_url: str,
    target_options: dict[str, Any],
    index: int,
    start: int,
    stop: int,
    *,
    shard_cells: int,
    scratch_url: str | None = None,
) -> dict[str, Any]:
    """Write part ``index`` (rows ``[start, stop)`` of the source) into the dataset at ``target_url``.

    Returns the part record ``{"index", "start", "stop", "nnz", "negative", "non_integer",
    "max", "seconds"}``.
    """
    t0 = time.perf_counter()
    root = _open_root(target_url, target_options)
    with open_h5(spec.url, spec.storage_options) as f:
        var = read_var(f, spec)
        obs = read_obs_rows(f, start, stop)
        dtype = np.dtype(spec.dtype)
        if spec.layout == "csc":
            if scratch_url is None:
                raise ValueError("a CSC source needs the scratch_url its columns were transposed into")
            block = _assemble_from_buckets(scratch_url, target_options, index, stop - start, spec.n_vars, dtype)
            writer = PartWriter(
                root,
                index,
                start,
                stop,
                spec.n_vars,
                dtype,
                shard_cells=shard_cells,
                nnz_per_row=block.nnz / max(stop - start, 1),
            )
            writer.append(block)
        else:
            nnz_per_row = None
            if spec.layout == "csr":
                ip = f[spec.counts_key]["indptr"]
                nnz_per_row = (int(ip[stop]) - int(ip[start])) / max(stop - start, 1)
            writer = PartWriter(
                root, index, start, stop, spec.n_vars, dtype, shard_cells=shard_cells, nnz_per_row=nnz_per_row
            )
            step = row_block_size(spec, shard_cells)
            for a in range(start, stop, step):
                b = min(a + step, stop)
                try:
                    block = read_csr_rows(f, spec, a, b)
                except OSError as e:
                    raise _read_error(spec, f"rows {a}..{b}", e) from e
                writer.append(block)
        info = writer.finish(obs, var)
    info["seconds"] = time.perf_counter() - t0
    return info


def release_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``) once a task is done.

    Workers run with glibc's default, adaptive allocation thresholds (see
    ``pipelines.dask_cluster.WORKER_ENVIRON``): fast while a part is written, but the
    heap keeps the high-water mark of every part a worker wrote. Trimming between tasks
    keeps a worker's resident memory at one part's working set whatever the file's size.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc: nothing to trim with
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def write_var(spec: SourceSpec, target_url: str, target_options: dict[str, Any]) -> int:
    """Write the dataset's genes (the source's var, which every part repeats) at the store's root."""
    from pipelines.ingest.writer import write_tables

    root = _open_root(target_url, target_options)
    with open_h5(spec.url, spec.storage_options) as f:
        var = read_var(f, spec)
    write_tables(root, {"var": var})
    return len(var)


def transpose_columns(
    spec: SourceSpec,
    scratch_url: str,
    scratch_options: dict[str, Any],
    block: int,
    col_start: int,
    col_stop: int,
    part_bounds: list[int],
) -> int:
    """Bucket the entries of CSC columns ``[col_start, col_stop)`` by part into scratch files.

    ``part_bounds`` are the parts' first rows plus the end (``[0, 16384, …, n_obs]``).
    Writes ``<scratch>/p<part>/c<block>.npz`` (rows local to the part, columns, values)
    for every part the columns touch; returns the number of entries read.
    """
    with open_h5(spec.url, spec.storage_options) as f:
        elem = f[spec.counts_key]
        indptr = elem["indptr"][col_start : col_stop + 1].astype(np.int64)
        a, b = int(indptr[0]), int(indptr[-1])
        try:
            rows = elem["indices"][a:b].astype(np.int64)
            vals = elem["data"][a:b]
        except OSError as e:
            raise _read_error(spec, f"columns {col_start}..{col_stop}", e) from e
    cols = np.repeat(np.arange(col_start, col_stop, dtype=np.int32), np.diff(indptr))
    bounds = np.asarray(part_bounds, dtype=np.int64)
    part_of = np.searchsorted(bounds, rows, side="right") - 1
    order = np.argsort(part_of, kind="stable")
    rows, cols, vals, part_of = rows[order], cols[order], vals[order], part_of[order]
    fs, root = _fs(scratch_url, scratch_options)
    edges = np.flatnonzero(np.diff(part_of)) + 1
    for lo, hi in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(part_of)]]), strict=True):
        if hi <= lo:
            continue
        p = int(part_of[lo])
        buf = io.BytesIO()
        np.savez(buf, rows=(rows[lo:hi] - bounds[p]).astype(np.int32), cols=cols[lo:hi], vals=vals[lo:hi])
        path = f"{root}/p{p:05d}/c{block:05d}.npz"
        if "file" in fs.protocol:
            fs.makedirs(f"{root}/p{p:05d}", exist_ok=True)
        fs.pipe_file(path, buf.getvalue())
    return b - a


def _assemble_from_buckets(
    scratch_url: str, options: dict[str, Any], index: int, n_rows: int, n_vars: int, dtype: np.dtype
) -> sp.csr_matrix:
    import scipy.sparse as sp

    fs, root = _fs(scratch_url, options)
    try:
        files = sorted(fs.ls(f"{root}/p{index:05d}", detail=False))
    except FileNotFoundError:
        files = []
    rows, cols, vals = [], [], []
    for path in files:
        with np.load(io.BytesIO(fs.cat_file(path))) as z:
            rows.append(z["rows"])
            cols.append(z["cols"])
            vals.append(z["vals"])
    if not files:
        return sp.csr_matrix((n_rows, n_vars), dtype=dtype)
    m = sp.csr_matrix(
        (np.concatenate(vals).astype(dtype), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_vars)
    )
    m.sort_indices()
    return m
