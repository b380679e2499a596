"""Publish a validation to the lake, and read it back.

``reports/<dataset_id>/validation/`` is published atomically (staged, then committed with
a ``_SUCCESS`` marker) and replaced as a whole when validation runs again:

* ``validation.json``: the summary (outcome, code, reason, hint, warnings, counts, every check);
* ``gx_results.json``: Great Expectations' full validation results, per suite;
* ``data_docs/index.html``: GX Data Docs (the suites and this run's results, as HTML);
* ``validated_cells.parquet``: one row per cell: ``part`` and ``row`` (its position in the
  Zarr part), ``cell_id``, ``total_counts``, ``n_genes`` and ``kept`` (whether it goes on to
  embedding). Written when the dataset passed (with or without warnings).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import __version__, formats
from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake
from pipelines.validate.outcome import FAIL

SUMMARY = "validation.json"
GX_RESULTS = "gx_results.json"
DOCS = "data_docs"
CELLS_ENCODING = formats.parquet_encoding("validated-cells")
COPY_BLOCK = 8 << 20


def _cells_schema() -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("part", pa.int32()),
            ("row", pa.int32()),
            ("cell_id", pa.string()),
            ("total_counts", pa.float64()),
            ("n_genes", pa.int32()),
            ("kept", pa.bool_()),
        ]
    )
    return schema.with_metadata({**CELLS_ENCODING, b"sclake-version": __version__.encode()})


def write_cells_table(path: Path, cells: pd.DataFrame, kept: np.ndarray, part_ids: Iterable[Any]) -> Path:
    """Write the validated-cell table to the local file ``path``, one row group per part; returns ``path``.

    Parameters
    ----------
    path : Path
    cells : pandas.DataFrame
        ``part``, ``row``, ``total_counts``, ``n_genes`` of every cell, parts in order.
    kept : np.ndarray
        bool, one per cell.
    part_ids : iterable of pyarrow.Array
        The cell ids of each part in turn (string, nulls for missing ids), read as the table is
        written, so that only one part's ids are held at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _cells_schema()
    start = 0
    with pq.ParquetWriter(path, schema) as out:
        for ids in part_ids:
            stop = start + len(ids)
            rows = cells.iloc[start:stop]
            columns = [
                pa.array(rows["part"].to_numpy(), pa.int32()),
                pa.array(rows["row"].to_numpy(), pa.int32()),
                ids.cast(pa.string()),
                pa.array(rows["total_counts"].to_numpy(), pa.float64()),
                pa.array(rows["n_genes"].to_numpy(), pa.int32()),
                pa.array(np.asarray(kept[start:stop], dtype=bool), pa.bool_()),
            ]
            out.write_table(pa.Table.from_arrays(columns, schema=schema))
            start = stop
    if start != len(cells):
        raise ValueError(f"cell ids of {start:,} cells for a table of {len(cells):,} cells")
    return path


def publish(
    lake: Lake,
    final: str,
    summary: dict[str, Any],
    gx_results: dict[str, Any],
    docs_dir: Path,
    extra: dict[str, bytes | Path] | None = None,
) -> None:
    """Replace the validation folder ``final`` with this run's files, atomically (``extra``: more files,
    as bytes or local files, which are streamed)."""
    if lake.is_published(final):
        lake.unpublish(final)
    info = {**formats.encoding("validation"), "outcome": summary.get("outcome")}
    with lake.publishing(final, info=info) as stage:
        lake.put_tree(docs_dir, f"{stage}/{DOCS}")
        lake.write_bytes(f"{stage}/{GX_RESULTS}", json.dumps(gx_results, default=str).encode())
        for name, data in (extra or {}).items():
            if isinstance(data, Path):
                with open(data, "rb") as src, lake.open(f"{stage}/{name}", "wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_BLOCK)
            else:
                lake.write_bytes(f"{stage}/{name}", data)
        lake.write_json(f"{stage}/{SUMMARY}", summary)


def read_summary(lake: Lake, dataset_id: str, model: str | None = None) -> dict[str, Any] | None:
    """The published ``validation.json`` of a dataset (or of its embeddings with ``model``); None if absent."""
    final = PATHS.validation(dataset_id, model)
    if not lake.is_published(final):
        return None
    summary = lake.read_json(f"{final}/{SUMMARY}")
    formats.check("validation", summary, repr(lake.url(f"{final}/{SUMMARY}")))
    return summary


def is_validated(lake: Lake, dataset_id: str) -> bool:
    """Whether the dataset's latest validation passed (with or without warnings)."""
    summary = read_summary(lake, dataset_id)
    return bool(summary) and summary.get("outcome") != FAIL


def validated_cells(lake: Lake, dataset_id: str) -> dict[int, np.ndarray]:
    """Row indices (within each Zarr part) of the cells that passed validation, by part index.

    Every part of the dataset has an entry (an empty array when all its cells were dropped).
    The embedding engine embeds exactly these rows.

    Raises
    ------
    LakeError
        The dataset was not validated, or failed validation.
    """
    import pyarrow.parquet as pq

    summary = read_summary(lake, dataset_id)
    if summary is None:
        raise LakeError(f"dataset {dataset_id!r} has not been validated; run `sclake validate {dataset_id}`")
    if summary.get("outcome") == FAIL:
        raise LakeError(f"dataset {dataset_id!r} failed validation ({summary.get('code')}): {summary.get('reason')}")
    with lake.open(PATHS.validated_cells(dataset_id), "rb") as f:
        table = pq.read_table(f, columns=["part", "row", "kept"])
    formats.check("validated-cells", table.schema.metadata, repr(lake.url(PATHS.validated_cells(dataset_id))))
    part = table.column("part").to_numpy()
    row = table.column("row").to_numpy()
    kept = table.column("kept").to_numpy(zero_copy_only=False)
    out: dict[int, np.ndarray] = {}
    for p in np.unique(part):
        sel = part == p
        out[int(p)] = np.sort(row[sel & kept]).astype(np.int64)
    return out


def validated_cell_ids(lake: Lake, dataset_id: str) -> np.ndarray:
    """Cell ids of the validated cells, in (part, row) order."""
    import pyarrow.parquet as pq

    validated_cells(lake, dataset_id)  # raises for unvalidated / failed datasets
    with lake.open(PATHS.validated_cells(dataset_id), "rb") as f:
        table = pq.read_table(f, columns=["cell_id", "kept"])
    kept = table.column("kept").to_numpy(zero_copy_only=False)
    ids = np.asarray(table.column("cell_id").to_pylist(), dtype=object)
    return ids[kept]
