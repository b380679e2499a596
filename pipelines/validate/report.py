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

import io
import json
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


def cells_table(cells: pd.DataFrame, cell_ids: np.ndarray, kept: np.ndarray) -> bytes:
    """Parquet bytes of the validated-cell table (versioned in its key-value metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "part": pa.array(cells["part"].to_numpy(), pa.int32()),
            "row": pa.array(cells["row"].to_numpy(), pa.int32()),
            "cell_id": pa.array([None if v is None else str(v) for v in cell_ids], pa.string()),
            "total_counts": pa.array(cells["total_counts"].to_numpy(), pa.float64()),
            "n_genes": pa.array(cells["n_genes"].to_numpy(), pa.int32()),
            "kept": pa.array(np.asarray(kept, dtype=bool), pa.bool_()),
        }
    )
    table = table.replace_schema_metadata({**CELLS_ENCODING, b"sclake-version": __version__.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def publish(
    lake: Lake,
    final: str,
    summary: dict[str, Any],
    gx_results: dict[str, Any],
    docs_dir: Path,
    extra: dict[str, bytes] | None = None,
) -> None:
    """Replace the validation folder ``final`` with this run's files, atomically."""
    if lake.is_published(final):
        lake.unpublish(final)
    info = {**formats.encoding("validation"), "outcome": summary.get("outcome")}
    with lake.publishing(final, info=info) as stage:
        lake.put_tree(docs_dir, f"{stage}/{DOCS}")
        lake.write_bytes(f"{stage}/{GX_RESULTS}", json.dumps(gx_results, default=str).encode())
        for name, data in (extra or {}).items():
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
