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
from pathlib import Path
from typing import Any

import numpy as np

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


class CellsTableWriter:
    """Writes the validated-cell table to the local file ``path``, one row group per part, parts in order.

    Parts may be added in any order: one that comes before its turn waits (its ids and
    per-cell numbers, a few tens of bytes a cell) until the parts before it are written.

    Parameters
    ----------
    path : Path
    order : list of int
        The dataset's part indices, in order.
    """

    def __init__(self, path: Path, order: list[int]) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.order = list(order)
        self.next = 0
        self.waiting: dict[int, Any] = {}
        self.schema = _cells_schema()
        self.out = pq.ParquetWriter(self.path, self.schema)

    def add(self, part: int, ids: Any, total_counts: np.ndarray, n_genes: np.ndarray, kept: np.ndarray) -> None:
        """One part's cells: ids (a pyarrow string array, nulls for missing ids), their numbers and kept mask."""
        import pyarrow as pa

        n = len(ids)
        if not (len(total_counts) == len(n_genes) == len(kept) == n):
            raise ValueError(f"part {part}: {n:,} cell ids for {len(total_counts):,} cells")
        columns = [
            pa.array(np.full(n, part, np.int32), pa.int32()),
            pa.array(np.arange(n, dtype=np.int32), pa.int32()),
            ids.cast(pa.string()),
            pa.array(np.asarray(total_counts, np.float64), pa.float64()),
            pa.array(np.asarray(n_genes), pa.int32()),
            pa.array(np.asarray(kept, dtype=bool), pa.bool_()),
        ]
        self.waiting[int(part)] = pa.Table.from_arrays(columns, schema=self.schema)
        while self.next < len(self.order) and self.order[self.next] in self.waiting:
            self.out.write_table(self.waiting.pop(self.order[self.next]))
            self.next += 1

    def close(self) -> Path:
        """Finish the file; every part must have been added. Returns ``path``."""
        self.out.close()
        if self.next != len(self.order):
            missing = self.order[self.next :]
            raise ValueError(f"validated-cell table lacks parts {missing[:5]} ({len(missing)} in all)")
        return self.path

    def __enter__(self) -> CellsTableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.out.close()


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
