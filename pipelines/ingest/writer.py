"""Write one part of a dataset: an anndata group with sharded CSR counts, plus its cell stats.

Rows arrive in blocks; ``data`` and ``indices`` are buffered and written one whole shard
at a time (a region that covers complete shards is encoded and stored without reading
anything back), so a writer holds at most one shard plus one block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from pipelines.dataset import PARTS_GROUP, STATS_GROUP, part_key

CHUNK_ELEMS = 1 << 16  # inner chunk of data/indices: 65,536 values (256 KiB of float32)
MAX_SHARD_ELEMS = 1 << 24  # a shard holds at most 16 Mi values (64 MiB of float32)
PART_MARKER = "sclake-part"  # part attribute written last: the part is complete


def codecs() -> list[Any]:
    """Compression of the count arrays: Blosc zstd level 1 with byte shuffle (fast, ~4-7x on counts)."""
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]


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
        self.buf_data: list[np.ndarray] = []
        self.buf_indices: list[np.ndarray] = []
        self.buffered = 0
        self.rows = 0
        self.indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        self.total_counts = np.zeros(self.n_rows, dtype=np.float64)
        self.n_genes = np.zeros(self.n_rows, dtype=np.int32)
        self.negative = 0
        self.non_integer = 0
        self.max_value = 0.0

    def _create_arrays(self) -> None:
        per_row = self.nnz_per_row if self.nnz_per_row is not None else self.buffered / max(self.rows, 1)
        self.shard = shard_size(per_row, self.shard_cells)
        common = {"shape": (0,), "chunks": (CHUNK_ELEMS,), "shards": (self.shard,), "compressors": codecs()}
        self.data = self.x.create_array("data", dtype=self.dtype, **common)
        self.indices = self.x.create_array("indices", dtype=self.index_dtype, **common)

    def append(self, block: sp.csr_matrix) -> None:
        """Append the next ``block.shape[0]`` rows."""
        n = block.shape[0]
        if block.shape[1] != self.n_vars or self.rows + n > self.n_rows:
            raise ValueError(
                f"block {block.shape!r} does not fit part {self.index} at row {self.rows} of {self.n_rows}"
            )
        data = np.asarray(block.data, dtype=self.dtype)
        indptr = block.indptr.astype(np.int64)
        row_ids = np.repeat(np.arange(n), np.diff(indptr))
        rows = slice(self.rows, self.rows + n)
        self.total_counts[rows] = np.bincount(row_ids, weights=data, minlength=n)
        self.n_genes[rows] = np.bincount(row_ids, weights=data != 0, minlength=n).astype(np.int32)
        if data.size:
            self.negative += int((data < 0).sum())
            if data.dtype.kind == "f":
                self.non_integer += int((data != np.round(data)).sum())
            self.max_value = max(self.max_value, float(data.max()))
        base = self.indptr[self.rows]
        self.indptr[self.rows + 1 : self.rows + n + 1] = base + indptr[1:] - indptr[0]
        self.rows += n
        self.buf_data.append(data)
        self.buf_indices.append(np.asarray(block.indices, dtype=self.index_dtype))
        self.buffered += data.size
        if self.data is None and self.buffered:
            self._create_arrays()
        if self.data is not None and self.buffered >= self.shard:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        data = np.concatenate(self.buf_data) if len(self.buf_data) != 1 else self.buf_data[0]
        indices = np.concatenate(self.buf_indices) if len(self.buf_indices) != 1 else self.buf_indices[0]
        take = data.size if final else (data.size // self.shard) * self.shard
        if take:
            end = self.written + take
            for arr, values in ((self.data, data), (self.indices, indices)):
                arr.resize((end,))
                arr[self.written : end] = values[:take]
            self.written = end
        self.buf_data, self.buf_indices = [data[take:]], [indices[take:]]
        self.buffered = data.size - take

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame) -> dict[str, Any]:
        """Write the remaining values, indptr, obs, var and stats; mark the part complete."""
        import anndata as ad
        from anndata.io import write_elem

        if self.rows != self.n_rows:
            raise ValueError(f"part {self.index} received {self.rows} rows, expected {self.n_rows}")
        if len(obs) != self.n_rows:
            raise ValueError(f"part {self.index} obs has {len(obs)} rows, expected {self.n_rows}")
        if self.data is None:
            self._create_arrays()
        self._flush(final=True)
        small = {"compressors": codecs()}
        indptr = self.indptr.astype(self.index_dtype)
        self.x.create_array("indptr", data=indptr, chunks=(len(indptr),), **small)
        self.stats_group.create_array("total_counts", data=self.total_counts, chunks=(max(self.n_rows, 1),), **small)
        self.stats_group.create_array("n_genes", data=self.n_genes, chunks=(max(self.n_rows, 1),), **small)
        with ad.settings.override(auto_shard_zarr_v3=False):
            write_elem(self.group, "obs", obs)
            write_elem(self.group, "var", var)
            for key in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
                write_elem(self.group, key, {})
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
