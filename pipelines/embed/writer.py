"""Parquet files of the embedding step: schemas loaded from ``schemas/``, obs carried through.

Two formats, each described by a JSON file in ``schemas/`` that this module reads:
``embeddings.schema.json`` (the contract users query with DuckDB) and
``tokens.schema.json`` (the stored rank-value tokens). A file is built whole in memory
(:func:`parquet_bytes`) and put in one piece with :meth:`pipelines.lake.Lake.put_atomic`,
so a resumed run never meets a half-written part.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import formats
from pipelines.errors import ConfigError, LakeError
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.lake import Lake

log = get_logger(__name__)

SCHEMAS_ENV = "SCLAKE_SCHEMAS_DIR"
OBS_PREFIX = "obs."
SCALAR_TYPES = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
}


@lru_cache(maxsize=4)
def load_schema(name: str) -> dict[str, Any]:
    """``schemas/<name>.schema.json`` (``$SCLAKE_SCHEMAS_DIR`` overrides the folder)."""
    env = os.environ.get(SCHEMAS_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "schemas"
    path = folder / f"{name}.schema.json"
    if not path.is_file():
        raise ConfigError(f"schema {str(path)!r} not found; run from the sclake source tree or set {SCHEMAS_ENV}")
    return json.loads(path.read_text())


def encoding(name: str) -> dict[str, str]:
    """The ``encoding-type``/``encoding-version`` pair of format ``name`` (:mod:`pipelines.formats`;
    ``tests/test_formats.py`` checks that the schema files declare the same)."""
    return formats.encoding(name)


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _scalar(type_: pa.DataType) -> bool:
    return any(type_ == t for t in SCALAR_TYPES.values()) or pa.types.is_large_string(type_)


def obs_columns(obs: pd.DataFrame) -> dict[str, pa.Array]:
    """The scalar obs columns as Arrow arrays (categoricals as their values); others are left out."""
    import pandas as pd

    from pipelines.frames import categorical_values

    out: dict[str, pa.Array] = {}
    for name in obs.columns:
        col = obs[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = categorical_values(col)
        try:
            out[str(name)] = pa.array(col.to_numpy(dtype=object) if col.dtype == object else col, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            log.info("obs column %r (%s) is not scalar; not carried into the embeddings", name, col.dtype)
    return scalar_columns(out)


def scalar_columns(columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The columns of a scalar Arrow type (large strings as strings); others are left out."""
    out: dict[str, pa.Array] = {}
    for name, arr in columns.items():
        if pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
        if not _scalar(arr.type):
            log.info("obs column %r (%s) is not scalar; not carried into the embeddings", name, arr.type)
            continue
        out[name] = arr
    return out


def carried_name(name: str) -> str:
    """The embeddings column an obs column goes to (reserved names get the schema's prefix)."""
    rules = load_schema("embeddings")["obs_columns"]
    return f"{rules['rename_reserved_with_prefix']}{name}" if name in rules["reserved"] else name


def _metadata(name: str, values: dict[str, Any]) -> dict[bytes, bytes]:
    meta = {**encoding(name), **values}
    return {k.encode(): (v if isinstance(v, str) else json.dumps(v)).encode() for k, v in meta.items()}


def tokens_table(
    cell_ids: list[str] | np.ndarray, ids: np.ndarray, offsets: np.ndarray, obs: dict[str, pa.Array], meta: dict
) -> pa.Table:
    """A token part: ``cell_id``, ``input_ids`` (list<int32>), ``length``, then ``obs.<name>`` columns."""
    lengths = np.diff(offsets).astype(np.int32)
    if offsets[-1] > np.iinfo(np.int32).max:
        input_ids = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(ids, pa.int32()))
    else:
        input_ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32()))
    columns = {
        "cell_id": pa.array([str(c) for c in cell_ids], pa.string()),
        "input_ids": input_ids,
        "length": pa.array(lengths, pa.int32()),
        **{f"{OBS_PREFIX}{k}": v for k, v in obs.items()},
    }
    table = pa.table(columns)
    return table.replace_schema_metadata(_metadata("tokens", meta))


def embeddings_table(cell_ids: pa.Array, embeddings: np.ndarray, obs: pa.Table | None, meta: dict) -> pa.Table:
    """An embeddings part per ``schemas/embeddings.schema.json``.

    Parameters
    ----------
    cell_ids : pyarrow.Array
        string, one per row.
    embeddings : np.ndarray
        float32, ``(rows, width)``.
    obs : pyarrow.Table, optional
        Carried obs columns (named ``obs.<name>`` as in the token files, or plain).
    meta : dict
        Key-value metadata besides the encoding (model, precision, device, ...).
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    rows, width = emb.shape
    values = pa.array(emb.reshape(-1), pa.float32())
    columns: dict[str, pa.Array] = {
        "cell_id": cell_ids.cast(pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, width),
    }
    for name in obs.column_names if obs is not None else []:
        plain = name[len(OBS_PREFIX) :] if name.startswith(OBS_PREFIX) else name
        columns[carried_name(plain)] = obs.column(name)
    table = pa.table(columns)
    if table.num_rows != rows:
        raise ValueError(f"{len(cell_ids)} cell ids for {rows} embeddings")
    return table.replace_schema_metadata(_metadata("embeddings", {**meta, "width": width}))


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as Parquet (zstd; dictionary encoding for strings only)."""
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=load_schema("embeddings")["compression"], use_dictionary=strings)
    return buf.getvalue()


def staged_metadata(lake: Lake, stage: str, name: str) -> Iterator[tuple[str, dict[str, str], int]]:
    """``(path, metadata, rows)`` of each readable part of format ``name`` in a staging folder
    (parts of another format or version, or cut short, are left out: they are written again)."""
    for rel in lake.staged_parts(stage):
        found = read_metadata(lake, rel)
        if found is None:
            continue
        meta, rows = found
        try:
            formats.check(name, meta, rel)
        except formats.FormatError:
            continue
        yield rel, meta, rows


def read_metadata(lake: Lake, rel: str) -> tuple[dict[str, str], int] | None:
    """A Parquet file's decoded key-value metadata and row count, ``None`` when it cannot be read."""
    try:
        with lake.open(rel, "rb") as f:
            pf = pq.ParquetFile(f)
            meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
            return meta, pf.metadata.num_rows
    except (OSError, pa.ArrowException, LakeError):
        return None
