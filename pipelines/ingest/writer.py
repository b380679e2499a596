"""Write one part of a dataset: an anndata group with sharded CSR counts, plus its cell stats.

Rows arrive in blocks; ``data`` and ``indices`` are copied into a one-shard buffer that
is written whenever it is full (a region that covers a complete shard is encoded and
stored without reading anything back), so a writer holds one shard plus one block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pipelines.dataset import PARTS_GROUP, STATS_GROUP, part_key

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

CHUNK_ELEMS = 1 << 18  # inner chunk of data/indices: 262,144 values (1 MiB of float32)
MAX_SHARD_ELEMS = 1 << 24  # a shard holds at most 16 Mi values (64 MiB of float32)
PART_MARKER = "sclake-part"  # part attribute written last: the part is complete
EMPTY_SLOTS = ("layers", "obsm", "obsp", "varm", "varp", "uns")  # an AnnData's other elements, empty here


def codecs() -> list[Any]:
    """Compression of the count arrays: Blosc LZ4 with bit shuffle (cheap to write and read, ~3.5-4x on counts)."""
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]


def shard_size(nnz_per_row: float, shard_cells: int) -> int:
    """Values per shard: ``shard_cells`` rows' worth, a whole number of inner chunks, capped."""
    want = int(np.ceil(max(nnz_per_row, 1.0) * shard_cells / CHUNK_ELEMS)) * CHUNK_ELEMS
    return int(min(max(want, CHUNK_ELEMS), MAX_SHARD_ELEMS))


def part_is_complete(root: zarr.Group, index: int, start: int, stop: int) -> dict[str, Any] | None:
    """The completion record of a part already written for rows ``[start, stop)``, else ``None``."""
    try:
        info = dict(root[f"{PARTS_GROUP}/{part_key(index)}"].attrs).get(PART_MARKER)
        root[f"{STATS_GROUP}/{part_key(index)}/n_genes"]
    except (KeyError, FileNotFoundError, ValueError):
        return None
    if not info or info.get("start") != start or info.get("stop") != stop:
        return None
    return info


class PartWriter:
    """Writes part ``index`` (rows ``[start, stop)``) under ``root``.

    Parameters
    ----------
    root
        The dataset's root group (opened writable).
    n_vars
        Columns of the matrix.
    dtype
        dtype of the stored values (the source's).
    nnz_per_row
        Expected stored values per row, to size shards (taken from the first block if ``None``).
    shard_cells
        Rows' worth of values per shard.
    """

    def __init__(
        self,
        root: zarr.Group,
        index: int,
        start: int,
        stop: int,
        n_vars: int,
        dtype: np.dtype,
        *,
        shard_cells: int,
        nnz_per_row: float | None = None,
    ) -> None:
        self.index, self.start, self.stop, self.n_vars = index, start, stop, n_vars
        self.n_rows = stop - start
        self.dtype = np.dtype(dtype)
        # indices and indptr share scipy's index dtype: int32 unless a part could hold 2**31 values.
        self.index_dtype = np.dtype(np.int32 if self.n_rows * n_vars < 2**31 else np.int64)
        self.shard_cells = shard_cells
        self.nnz_per_row = nnz_per_row
        # mode "w" drops whatever an interrupted run left for this part.
        self.group = root.require_group(PARTS_GROUP).create_group(part_key(index), overwrite=True)
        self.stats_group = root.require_group(STATS_GROUP).create_group(part_key(index), overwrite=True)
        self.group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        self.x = self.group.create_group("X")
        self.x.attrs.update(
            {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [self.n_rows, n_vars]}
        )
        self.data: zarr.Array | None = None
        self.indices: zarr.Array | None = None
        self.shard = 0
        self.written = 0  # values stored in the arrays
        self.buf_data = np.empty(0, dtype=self.dtype)  # one shard, filled then written
        self.buf_indices = np.empty(0, dtype=self.index_dtype)
        self.buffered = 0
        self.rows = 0
        self.indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        self.total_counts = np.zeros(self.n_rows, dtype=np.float64)
        self.n_genes = np.zeros(self.n_rows, dtype=np.int32)
        self.negative = 0
        self.non_integer = 0
        self.max_value = 0.0

    def _create_arrays(self, per_row: float) -> None:
        self.shard = shard_size(per_row, self.shard_cells)
        common = {
            "shape": (0,),
            "chunks": (CHUNK_ELEMS,),
            "shards": (self.shard,),
            "compressors": codecs(),
            # Skips zarr's scan of every chunk for "all fill value": count chunks are never empty.
            "config": {"write_empty_chunks": True},
        }
        self.data = self.x.create_array("data", dtype=self.dtype, **common)
        self.indices = self.x.create_array("indices", dtype=self.index_dtype, **common)
        self.buf_data = np.empty(self.shard, dtype=self.dtype)
        self.buf_indices = np.empty(self.shard, dtype=self.index_dtype)

    def append(self, block: sp.csr_matrix) -> None:
        """Append the next ``block.shape[0]`` rows."""
        n = block.shape[0]
        if block.shape[1] != self.n_vars or self.rows + n > self.n_rows:
            raise ValueError(
                f"block {block.shape!r} does not fit part {self.index} at row {self.rows} of {self.n_rows}"
            )
        data = np.asarray(block.data, dtype=self.dtype)
        indices = np.asarray(block.indices, dtype=self.index_dtype)
        indptr = block.indptr.astype(np.int64) - int(block.indptr[0])
        self._count(data, indptr)
        self.indptr[self.rows + 1 : self.rows + n + 1] = self.indptr[self.rows] + indptr[1:]
        self.rows += n
        if self.data is None:
            self._create_arrays(self.nnz_per_row if self.nnz_per_row is not None else data.size / max(n, 1))
        pos = 0
        while pos < data.size:  # fill the shard buffer; write it whenever it is full
            take = min(self.shard - self.buffered, data.size - pos)
            self.buf_data[self.buffered : self.buffered + take] = data[pos : pos + take]
            self.buf_indices[self.buffered : self.buffered + take] = indices[pos : pos + take]
            self.buffered += take
            pos += take
            if self.buffered == self.shard:
                self._write_buffer()

    def _count(self, data: np.ndarray, indptr: np.ndarray) -> None:
        """Per-cell stats of a block (total counts, genes detected) and value checks."""
        n = len(indptr) - 1
        rows = slice(self.rows, self.rows + n)
        genes = np.diff(indptr)
        filled = genes > 0
        starts = indptr[:-1][filled]  # strictly increasing: reduceat sums each non-empty row
        negative = non_integer = 0
        if data.size:
            lo, hi = data.min(), data.max()
            if lo < 0:
                negative = int(np.count_nonzero(data < 0))
            if data.dtype.kind == "f":
                non_integer = int(np.count_nonzero(data != np.rint(data)))
            self.max_value = max(self.max_value, float(hi))
        self.negative += negative
        self.non_integer += non_integer
        totals = np.zeros(n, dtype=np.float64)
        if starts.size:
            totals[filled] = _row_sums(data, starts, exact_in_float32=not negative and not non_integer)
            zero = data == 0
            if zero.any():  # explicitly stored zeros are not detected genes
                genes = genes.copy()
                genes[filled] -= np.add.reduceat(zero, starts, dtype=np.int64)
        self.total_counts[rows] = totals
        self.n_genes[rows] = genes

    def _write_buffer(self) -> None:
        end = self.written + self.buffered
        if self.buffered:
            for arr, values in ((self.data, self.buf_data), (self.indices, self.buf_indices)):
                arr.resize((end,))
                arr[self.written : end] = values[: self.buffered]
        self.written = end
        self.buffered = 0

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame) -> dict[str, Any]:
        """Write the remaining values, indptr, obs, var and stats; mark the part complete."""
        if self.rows != self.n_rows:
            raise ValueError(f"part {self.index} received {self.rows} rows, expected {self.n_rows}")
        if len(obs) != self.n_rows:
            raise ValueError(f"part {self.index} obs has {len(obs)} rows, expected {self.n_rows}")
        if self.data is None:
            self._create_arrays(self.nnz_per_row or 0.0)
        self._write_buffer()
        small = {"compressors": codecs()}
        indptr = self.indptr.astype(self.index_dtype)
        self.x.create_array("indptr", data=indptr, chunks=(len(indptr),), **small)
        self.stats_group.create_array("total_counts", data=self.total_counts, chunks=(max(self.n_rows, 1),), **small)
        self.stats_group.create_array("n_genes", data=self.n_genes, chunks=(max(self.n_rows, 1),), **small)
        write_tables(self.group, {"obs": obs, "var": var, **{k: {} for k in EMPTY_SLOTS}})
        info = {
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "nnz": int(self.written),
            "negative": self.negative,
            "non_integer": self.non_integer,
            "max": self.max_value,
        }
        self.group.attrs[PART_MARKER] = info
        return info


def _row_sums(data: np.ndarray, starts: np.ndarray, *, exact_in_float32: bool) -> np.ndarray:
    """Sums of the rows starting at ``starts`` (float64 values).

    For float32 counts that are whole and non-negative, summing in float32 is exact while
    the row totals stay below 2**24, and several times faster than accumulating in float64;
    any other case, or a larger total, is summed in float64.
    """
    if exact_in_float32 and data.dtype == np.float32:
        sums = np.add.reduceat(data, starts)
        if float(sums.max()) < 2.0**24:
            return sums.astype(np.float64)
    return np.add.reduceat(data, starts, dtype=np.float64)


def write_tables(group: zarr.Group, elems: dict[str, Any]) -> None:
    """Write anndata elements (``{"obs": df, …}``) under ``group`` with anndata's encodings.

    They are encoded into an in-memory store first and then stored in one batch (concurrent
    on a local disk, one object after the other on S3): written in place, every attribute
    anndata sets is its own round trip to the store (about 85 for one obs and var), which
    cost a quarter of a part's time on a local disk and more on S3.
    """
    import anndata as ad
    from anndata.io import write_elem
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    mem = MemoryStore()
    staging = zarr.open_group(mem, mode="w", zarr_format=3)
    with ad.settings.override(auto_shard_zarr_v3=False):
        for key, elem in elems.items():
            write_elem(staging, key, elem)
    target, prefix = group.store, f"{group.path}/" if group.path else ""

    async def copy() -> None:
        import asyncio

        from zarr.storage import LocalStore

        proto = default_buffer_prototype()
        keys = [k async for k in mem.list() if k != "zarr.json"]  # the staging root itself stays behind
        values = await asyncio.gather(*(mem.get(k, prototype=proto) for k in keys))
        if isinstance(target, LocalStore):
            await asyncio.gather(*(target.set(prefix + k, v) for k, v in zip(keys, values, strict=True)))
            return
        # One object at a time on S3: rclone's server fails concurrent PUTs that create files in
        # one new folder ("Dir.Rename error"), and the client's retry of such a PUT can stall.
        for k, v in zip(keys, values, strict=True):
            await target.set(prefix + k, v)

    sync(copy())
