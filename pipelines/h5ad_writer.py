"""``StreamingH5adWriter``: an ``.h5ad`` whose X (CSR) is written in row blocks, memory flat.

Used by :mod:`pipelines.sample` for files of any size; the result reads back with
anndata's own ``read_h5ad``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _object_strings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its string index and columns as object arrays, the encoding every anndata reads.

    pandas 3 gives strings their own dtype by default, which anndata writes only behind an
    opt-in setting (older readers cannot read it back).
    """
    out = df.copy()
    if isinstance(out.index.dtype, pd.StringDtype):
        out.index = out.index.astype(object)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].astype(object)
    return out


class StreamingH5adWriter:
    """Write an ``.h5ad`` whose X is a CSR matrix appended in row blocks.

    obs and var (small) are written whole with anndata's ``write_elem``; X's ``data`` and
    ``indices`` are resizable chunked HDF5 datasets grown block by block, under a group
    carrying anndata's ``csr_matrix`` encoding attributes. ``indptr`` (8 bytes a row) is
    kept in memory and written by :meth:`close`, with the index dtype scipy would use:
    int32 below 2**31 stored values (``indices`` int32 too), int64 above (``indices``
    then rewritten as int64), so that scipy operations on the matrix read back work.
    """

    CHUNK = 1 << 20  # elements per HDF5 chunk of data/indices

    def __init__(self, path: str | Path, obs: pd.DataFrame, var: pd.DataFrame, *, compression: dict | None = None):
        from anndata.io import write_elem

        self.n_obs, self.n_vars = len(obs), len(var)
        self.rows = 0
        self.nnz = 0
        self.file = h5py.File(path, "w")
        f = self.file
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", _object_strings(obs))
        write_elem(f, "var", _object_strings(var))
        for key in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            write_elem(f, key, {})
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = np.array([self.n_obs, self.n_vars], dtype=np.int64)
        opts = dict(compression or {})
        self.data = x.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(self.CHUNK,), **opts
        )
        self.indices = x.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(self.CHUNK,), **opts
        )
        self.x = x
        self.opts = opts
        self.indptr = np.zeros(self.n_obs + 1, dtype=np.int64)

    def append(self, block: sp.csr_matrix) -> None:
        """Append the next rows (a CSR block with ``n_vars`` columns)."""
        if block.shape[1] != self.n_vars or self.rows + block.shape[0] > self.n_obs:
            raise ValueError(
                f"block of shape {block.shape!r} does not fit after row {self.rows} of a {self.n_obs}x{self.n_vars} X"
            )
        n = block.nnz
        self.data.resize((self.nnz + n,))
        self.indices.resize((self.nnz + n,))
        self.data[self.nnz :] = block.data.astype(np.float32, copy=False)
        self.indices[self.nnz :] = block.indices.astype(np.int32, copy=False)
        self.indptr[self.rows + 1 : self.rows + 1 + block.shape[0]] = self.nnz + block.indptr[1:].astype(np.int64)
        self.rows += block.shape[0]
        self.nnz += n

    def close(self) -> None:
        try:
            if self.rows != self.n_obs:
                raise ValueError(f"only {self.rows} of {self.n_obs} rows were written")
            if self.nnz < 2**31:
                self.x.create_dataset("indptr", data=self.indptr.astype(np.int32))
            else:
                self.x.create_dataset("indptr", data=self.indptr)
                self._widen_indices()
        finally:
            self.file.close()

    def _widen_indices(self) -> None:
        """Rewrite ``indices`` as int64, one chunk at a time."""
        wide = self.x.create_dataset("indices64", shape=(self.nnz,), dtype=np.int64, chunks=(self.CHUNK,), **self.opts)
        for a in range(0, self.nnz, self.CHUNK * 16):
            wide[a : a + self.CHUNK * 16] = self.indices[a : a + self.CHUNK * 16]
        del self.x["indices"]
        self.x.move("indices64", "indices")

    def __enter__(self) -> StreamingH5adWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.file.close()
