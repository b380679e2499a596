"""Read a Zarr part's raw counts a block of rows at a time, so that a step's memory does not follow the part size.

A part holds up to ``SCLAKE_PART_CELLS`` cells (16,384 by default): about 200 MB of CSR
counts for 20,000 genes, and several times that in the temporaries a whole-part NumPy
computation makes. The steps that only need one row at a time (validation's summaries,
rank-value tokenization) read ``BLOCK_CELLS`` rows at a time instead: the row pointer of
the part first (a few KB), then only the slice of ``data``/``indices`` that the block
covers, which Zarr reads from the shards it spans.

Between blocks the C allocator is asked to hand freed memory back to the system
(:func:`trim_memory`): glibc keeps what NumPy frees in per-thread arenas (its mmap threshold
rises to the largest buffer freed), and a step that ran two threads over 2,048-row blocks
held about 600 MB of such free memory, which the kernel counts as the process's until trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from pipelines.settings import Settings

# Rows per block: a divisor of the default shard size (4,096 cells), about 12 MB of counts at
# 20,000 genes and 1,500 genes detected per cell.
BLOCK_CELLS = 1024


def iter_row_blocks(ds: Any, part: int, rows: int = BLOCK_CELLS) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(first_row, block)`` for consecutive blocks of at most ``rows`` rows of part ``part``'s counts.

    Parameters
    ----------
    ds : pipelines.dataset.Dataset
    part : int
        The part index.
    rows : int
        Rows per block.

    Yields
    ------
    tuple of (int, scipy.sparse.csr_matrix)
        The block's first row within the part, and the block (all the part's columns). A part
        without rows yields one empty block, so that callers see its shape.
    """
    if rows < 1:
        raise ValueError(f"rows per block must be at least 1, got {rows!r}")
    x = ds.part_group(part)["X"]
    n_rows, n_cols = (int(s) for s in x.attrs["shape"])
    indptr = np.asarray(x["indptr"][...], dtype=np.int64)
    if n_rows == 0:
        yield 0, sp.csr_matrix((0, n_cols), dtype=x["data"].dtype)
        return
    for a in range(0, n_rows, rows):
        b = min(a + rows, n_rows)
        lo, hi = int(indptr[a]), int(indptr[b])
        data = x["data"][lo:hi]
        indices = x["indices"][lo:hi]
        yield a, sp.csr_matrix((data, indices, indptr[a : b + 1] - lo), shape=(b - a, n_cols))
        del data, indices
        trim_memory()


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def trim_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def parallel_parts(settings: Settings) -> int:
    """Parts a step works on at once in its own threads (no Dask client): ``SCLAKE_DASK_WORKERS``, at most
    one per core.

    Each holds one block of rows and its temporaries (about 150 MB at 20,000 genes) and its
    part's compressed output, so a step's memory follows this number, not the number of cells.
    """
    return max(1, min(settings.dask_workers, os.cpu_count() or 1))
