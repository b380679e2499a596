"""The source ``.h5ad``: open it (local or through fsspec), inspect it, read row ranges.

Nothing here reads a whole matrix: the inspection reads attributes, ``obs``/``var``
index lengths and a sample of values; the readers return one row range at a time.

Raw-counts rule (documented in ``docs/ingest.md``): the counts are the first of
``layers["counts"]``, ``layers["raw_counts"]``, ``raw.X`` and ``X`` that exists and
holds non-negative integer values (checked on a sample of up to ~200,000 stored values
taken at the start, middle and end). A file where none does is refused.

Gene-id rule: the var index if most of its values look like Ensembl gene ids, else the
first var column among ``ensembl_id``, ``gene_ids``, ``gene_id``, ``ensembl_ids``,
``feature_id``, ``gene_ensembl_id`` (then any string column) whose values do.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from pipelines.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

COUNT_CANDIDATES = ("layers/counts", "layers/raw_counts", "raw/X", "X")
GENE_ID_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "ensembl_ids", "feature_id", "gene_ensembl_id")
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
ENSEMBL_SHARE = 0.9  # share of values that must look like Ensembl ids
SAMPLE_VALUES = 65_536  # values read per sample window by the counts check
DENSE_BLOCK_BYTES = 64 * 1024 * 1024  # a dense row read holds at most this much
READ_BLOCK_BYTES = 8 * 1024 * 1024  # read-ahead of remote sources: one request per 8 MiB read
HINT_COUNTS = "upload an .h5ad with raw integer counts in X, layers['counts'] or raw.X"


@dataclass(frozen=True)
class SourceSpec:
    """Where the source is and what it holds; small and picklable (sent to Dask tasks)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    counts_key: str = "X"  # h5 path of the counts matrix
    layout: str = "csr"  # csr | csc | dense
    dtype: str = "float32"
    n_obs: int = 0
    n_vars: int = 0
    nnz: int | None = None  # stored entries (sparse) or None (dense)
    var_key: str = "var"  # h5 path of the var matching the counts
    gene_id_source: str | None = "index"


def _open_error(e: OSError) -> Exception:
    """Turn h5py's error on opening into an ``InputError`` saying what is wrong."""
    msg = str(e)
    if isinstance(e, FileNotFoundError) or "errno = 2" in msg:
        return e
    if "truncated" in msg:
        return InputError(f"the file is truncated (HDF5: {msg})", "upload the complete file again", code="truncated")
    return InputError(f"not an HDF5/.h5ad file (HDF5: {msg})", "upload an .h5ad written by anndata", code="not_hdf5")


@contextlib.contextmanager
def open_h5(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[h5py.File]:
    """Open a local path, ``file://`` URI or ``s3://`` URL as a read-only ``h5py.File``.

    Raises ``InputError`` when the bytes are not a readable HDF5 file.
    """
    local = url[len("file://") :] if url.startswith("file://") else (url if "://" not in url else None)
    if local is not None:
        try:
            f = h5py.File(local, "r")
        except OSError as e:
            raise _open_error(e) from e
        with f:
            yield f
        return
    fobj = _open_remote(url, storage_options or {})
    try:
        f = h5py.File(fobj, "r")
    except OSError as e:
        fobj.close()
        raise _open_error(e) from e
    with fobj, f:
        yield f


def _open_remote(url: str, storage_options: dict[str, Any]) -> Any:
    """A file object over a remote source whose reads run in the calling thread (see
    :mod:`pipelines.ingest.remote`: with fsspec's I/O thread, h5py can deadlock)."""
    if url.startswith("s3://"):
        from pipelines.ingest.remote import S3RangeFile

        return S3RangeFile(url, storage_options, block_size=READ_BLOCK_BYTES)
    raise ConfigError(f"{url!r}: only local paths, file:// and s3:// sources can be read")


def _encoding(elem: h5py.Group | h5py.Dataset) -> str:
    enc = elem.attrs.get("encoding-type", "")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if not enc and isinstance(elem, h5py.Group) and "h5sparse_format" in elem.attrs:
        fmt = elem.attrs["h5sparse_format"]
        enc = f"{fmt.decode() if isinstance(fmt, bytes) else fmt}_matrix"
    return str(enc)


def matrix_layout(elem: h5py.Group | h5py.Dataset, key: str) -> tuple[str, tuple[int, int], np.dtype]:
    """``(layout, shape, dtype)`` of a matrix element; ``InputError`` for unsupported encodings."""
    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2 or elem.dtype.kind not in "biuf":
            raise InputError(
                f"{key} is a {elem.ndim}-d array of dtype {elem.dtype!s}; a 2-d numeric matrix is required",
                HINT_COUNTS,
                code="unsupported_encoding",
            )
        return "dense", (int(elem.shape[0]), int(elem.shape[1])), elem.dtype
    enc = _encoding(elem)
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(
            f"{key} has encoding {enc or 'unknown'!r}; supported: a dense array, csr_matrix or csc_matrix",
            "write the file with anndata (write_h5ad) and a CSR, CSC or dense X",
            code="unsupported_encoding",
        )
    missing = [k for k in ("data", "indices", "indptr") if k not in elem]
    if missing:
        raise InputError(f"{key} is a sparse matrix without {missing!r}", HINT_COUNTS, code="unsupported_encoding")
    shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
    if shape is None or len(shape) != 2:
        raise InputError(f"{key} has no 2-d shape attribute", HINT_COUNTS, code="unsupported_encoding")
    if elem["data"].dtype.kind not in "biuf":
        raise InputError(
            f"{key} holds {elem['data'].dtype!s} values; counts must be numeric",
            HINT_COUNTS,
            code="unsupported_encoding",
        )
    return enc[:3], (int(shape[0]), int(shape[1])), elem["data"].dtype


def _sample(elem: h5py.Group | h5py.Dataset, layout: str) -> np.ndarray:
    """Up to ~3 x 65,536 stored values from the start, middle and end of a matrix."""
    if layout == "dense":
        n_rows, n_cols = elem.shape
        rows = max(1, min(n_rows, SAMPLE_VALUES // max(n_cols, 1)))
        starts = sorted({0, max(0, n_rows // 2 - rows // 2), max(0, n_rows - rows)})
        return np.concatenate([np.asarray(elem[s : s + rows]).ravel() for s in starts])
    data = elem["data"]
    n = data.shape[0]
    starts = sorted({0, max(0, n // 2 - SAMPLE_VALUES // 2), max(0, n - SAMPLE_VALUES)})
    return np.concatenate([data[s : s + SAMPLE_VALUES] for s in starts]) if n else np.zeros(0)


def counts_problem(values: np.ndarray) -> str | None:
    """Why ``values`` are not raw counts (``None`` when they look like counts)."""
    if values.dtype.kind in "biu":
        return f"negative value {values.min()!r}" if values.size and values.min() < 0 else None
    finite = np.isfinite(values)
    if not finite.all():
        return f"non-finite value {values[~finite][0]!r}"
    if values.size and values.min() < 0:
        return f"negative value {values.min()!r}"
    frac = values != np.round(values)
    if frac.any():
        return f"non-integer value {float(values[frac][0])!r}"
    return None


def _index_length(df: h5py.Group | h5py.Dataset) -> int:
    if isinstance(df, h5py.Dataset):  # legacy compound-dtype dataframe
        return int(df.shape[0])
    key = df.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else key
    if key not in df:
        raise InputError(
            f"the dataframe {df.name!r} has no index {key!r}",
            "write the file with anndata",
            code="unsupported_encoding",
        )
    return int(df[key].shape[0])


def _looks_ensembl(values: np.ndarray) -> bool:
    if len(values) == 0 or values.dtype.kind not in "OUS":
        return False
    probe = values[:: max(1, len(values) // 2000)]
    hits = sum(1 for v in probe if ENSEMBL_RE.match(v.decode() if isinstance(v, bytes) else str(v)))
    return hits >= ENSEMBL_SHARE * len(probe)


def _find_gene_ids(index: np.ndarray | None, columns: list[str], values: Any) -> str | None:
    """The index if it looks like Ensembl ids, else the first such column (``values(col)``
    gives a column's values or ``None``), trying ``GENE_ID_COLUMNS`` first."""
    if index is not None and _looks_ensembl(index):
        return "index"
    others = [c for c in columns if c not in GENE_ID_COLUMNS]
    for col in [c for c in GENE_ID_COLUMNS if c in columns] + others:
        col_values = values(col)
        if col_values is not None and _looks_ensembl(col_values):
            return f"var/{col}"
    return None


def gene_id_source(var: pd.DataFrame) -> str | None:
    """``"index"``, ``"var/<column>"`` or ``None``: where the Ensembl ids of ``var`` are."""
    return _find_gene_ids(
        np.asarray(var.index, dtype=object), list(var.columns), lambda c: np.asarray(var[c].astype(object))
    )


def _string_values(elem: h5py.Group | h5py.Dataset) -> np.ndarray | None:
    """A dataframe column's values when it holds strings (a string array, or a categorical of
    strings), else ``None``; read with h5py alone."""
    if isinstance(elem, h5py.Dataset):
        if _encoding(elem) == "string-array" or h5py.check_string_dtype(elem.dtype) is not None:
            return np.asarray(elem.asstr()[...], dtype=object)
        return None
    if _encoding(elem) == "nullable-string-array" and isinstance(elem.get("values"), h5py.Dataset):
        return np.asarray(elem["values"].asstr()[...], dtype=object)
    cats = elem.get("categories") if _encoding(elem) == "categorical" else None
    if not isinstance(cats, h5py.Dataset) or h5py.check_string_dtype(cats.dtype) is None:
        return None
    codes = np.asarray(elem["codes"][...], dtype=np.int64)
    values = np.asarray(cats.asstr()[...], dtype=object)
    out = np.full(codes.shape, "", dtype=object)
    known = codes >= 0
    out[known] = values[codes[known]]
    return out


def gene_id_source_h5(f: h5py.File, var_key: str) -> str | None:
    """:func:`gene_id_source` of the var at ``var_key``, reading only its string columns.

    Inspecting an upload needs no anndata or pandas this way (they take seconds to
    import, which the ingest spends starting its workers instead).
    """
    var = f[var_key]
    if isinstance(var, h5py.Dataset) or _encoding(var) != "dataframe":  # legacy layouts: through anndata
        from anndata.io import read_elem

        return gene_id_source(read_elem(var))
    idx_key = var.attrs.get("_index", "_index")
    idx_key = idx_key.decode() if isinstance(idx_key, bytes) else idx_key
    columns = [c.decode() if isinstance(c, bytes) else str(c) for c in var.attrs.get("column-order", [])]
    return _find_gene_ids(_string_values(var[idx_key]), columns, lambda c: _string_values(var[c]) if c in var else None)


def inspect_source(url: str, storage_options: dict[str, Any] | None = None) -> SourceSpec:
    """Check that ``url`` is an ``.h5ad`` with raw counts and describe it (cheap: no matrix read).

    Raises
    ------
    InputError
        Not HDF5, truncated, no X, no raw counts anywhere, unsupported encoding, or
        matrix/obs/var lengths that disagree. The URI is added as a note.
    """
    try:
        with open_h5(url, storage_options) as f:
            if "X" not in f and "layers" not in f and "raw" not in f:
                raise InputError("the file has no X (no count matrix)", HINT_COUNTS, code="no_matrix")
            for key in ("obs", "var"):
                if key not in f:
                    raise InputError(f"the file has no {key}", "write the file with anndata", code="no_" + key)
            n_obs = _index_length(f["obs"])
            problems = []
            for key in COUNT_CANDIDATES:
                if key not in f:
                    continue
                layout, shape, dtype = matrix_layout(f[key], key)
                var_key = "raw/var" if key == "raw/X" else "var"
                if var_key not in f:
                    raise InputError(f"{key} has no {var_key}", "write the file with anndata", code="no_var")
                n_vars = _index_length(f[var_key])
                if shape != (n_obs, n_vars):
                    raise InputError(
                        f"{key} has shape {shape!r} but obs has {n_obs} rows and {var_key} {n_vars}",
                        "write the file with anndata",
                        code="shape_mismatch",
                    )
                problem = counts_problem(_sample(f[key], layout))
                if problem is not None:
                    problems.append(f"{key} holds a {problem}")
                    continue
                nnz = int(f[key]["data"].shape[0]) if layout != "dense" else None
                return SourceSpec(
                    url=url,
                    storage_options=dict(storage_options or {}),
                    counts_key=key,
                    layout=layout,
                    dtype=np.dtype(dtype).str,
                    n_obs=n_obs,
                    n_vars=n_vars,
                    nnz=nnz,
                    var_key=var_key,
                    gene_id_source=gene_id_source_h5(f, var_key),
                )
            if not problems:
                raise InputError("the file has no X (no count matrix)", HINT_COUNTS, code="no_matrix")
            raise InputError("no raw counts found: " + "; ".join(problems), HINT_COUNTS, code="no_raw_counts")
    except InputError as e:
        e.add_note(f"file: {url}")
        raise


# -- row readers (used inside Dask tasks) ----------------------------------------------------------


def read_csr_rows(f: h5py.File, spec: SourceSpec, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of a CSR or dense counts matrix as CSR (dtype kept)."""
    import scipy.sparse as sp

    elem = f[spec.counts_key]
    if spec.layout == "dense":
        return sp.csr_matrix(np.asarray(elem[start:stop]))
    if spec.layout != "csr":
        raise ValueError(f"read_csr_rows reads csr or dense matrices, not {spec.layout!r}")
    indptr = elem["indptr"][start : stop + 1].astype(np.int64)
    a, b = int(indptr[0]), int(indptr[-1])
    return sp.csr_matrix((elem["data"][a:b], elem["indices"][a:b], indptr - a), shape=(stop - start, spec.n_vars))


def row_block_size(spec: SourceSpec, rows_hint: int) -> int:
    """Rows per read: ``rows_hint`` for sparse inputs, fewer for wide dense ones (64 MiB per read)."""
    if spec.layout == "dense":
        per_row = max(1, spec.n_vars) * np.dtype(spec.dtype).itemsize
        return max(1, min(rows_hint, DENSE_BLOCK_BYTES // per_row))
    return rows_hint


def _column_rows(elem: h5py.Group | h5py.Dataset, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of one dataframe column in any anndata encoding."""
    import pandas as pd
    from anndata.io import read_elem

    enc = _encoding(elem)
    if isinstance(elem, h5py.Dataset):
        if enc == "string-array" or h5py.check_string_dtype(elem.dtype) is not None:
            return elem.asstr()[start:stop]
        if enc in ("array", ""):
            return elem[start:stop]
    elif enc == "categorical":
        ordered = elem.attrs.get("ordered", False)
        return pd.Categorical.from_codes(
            elem["codes"][start:stop], categories=read_elem(elem["categories"]), ordered=bool(ordered)
        )
    elif enc in ("nullable-integer", "nullable-boolean") and "mask" in elem:
        values, mask = elem["values"][start:stop], elem["mask"][start:stop].astype(bool)
        if enc == "nullable-integer":
            return pd.arrays.IntegerArray(values, mask)
        return pd.arrays.BooleanArray(values.astype(bool), mask)
    # Anything else (nullable strings, legacy layouts): read the column, keep the rows.
    return read_elem(elem)[start:stop]


def read_obs_rows(f: h5py.File, start: int, stop: int) -> pd.DataFrame:
    """obs rows ``[start, stop)``, columns in anndata's encodings; the index as strings."""
    import pandas as pd
    from anndata.io import read_elem

    obs = f["obs"]
    if isinstance(obs, h5py.Dataset) or _encoding(obs) != "dataframe":
        df = read_elem(obs).iloc[start:stop]  # legacy layouts: read whole (obs is small)
    else:
        idx_key = obs.attrs.get("_index", "_index")
        idx_key = idx_key.decode() if isinstance(idx_key, bytes) else idx_key
        columns = [c.decode() if isinstance(c, bytes) else str(c) for c in obs.attrs.get("column-order", [])]
        index = _column_rows(obs[idx_key], start, stop)
        df = pd.DataFrame(
            {c: _column_rows(obs[c], start, stop) for c in columns},
            index=pd.Index(np.asarray(index)),
            columns=columns or None,
        )
        if idx_key != "_index":
            df.index.name = idx_key
    # Cell ids are strings (anndata's obs_names); integer indexes become their decimal text.
    if df.index.dtype != object or not all(isinstance(v, str) for v in df.index[:10]):
        df.index = pd.Index([str(v) for v in df.index], dtype=object, name=df.index.name)
    return df


def read_var(f: h5py.File, spec: SourceSpec) -> pd.DataFrame:
    """The var matching the counts (``raw/var`` for ``raw/X``), index as strings."""
    import pandas as pd
    from anndata.io import read_elem

    var = read_elem(f[spec.var_key])
    if var.index.dtype != object:
        var.index = pd.Index([str(v) for v in var.index], dtype=object, name=var.index.name)
    return var
