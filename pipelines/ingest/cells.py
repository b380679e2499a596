"""The ``cells`` table: ``cells/dataset_id=<id>/obs.parquet``, one per ingested dataset.

``cell_id`` (the h5ad's obs names) followed by the obs columns, categories as their values.
It is published by ingestion, right after the dataset's Zarr store and before the upload
leaves ``incoming/``, so a query only reads it (:mod:`pipelines.query`, view ``cells``).
"""

from __future__ import annotations

import uuid
from typing import Any

from pipelines import formats
from pipelines.lake import COMMIT_MARKER, PATHS, Lake
from pipelines.logs import get_logger

log = get_logger(__name__)


def write_cells(lake: Lake, dataset_id: str) -> str:
    """Publish the obs Parquet of a published dataset from its Zarr store; returns its lake path.

    Idempotent: a dataset whose obs Parquet is already published is left as it is.
    """
    return commit_cells(lake, dataset_id, stage_cells(lake, dataset_id, PATHS.zarr(dataset_id)))


def stage_cells(lake: Lake, dataset_id: str, store: str, *, client: Any = None) -> tuple[str, int] | None:
    """Write the obs Parquet of the Zarr store at lake path ``store`` (published or not yet)
    into the table's staging folder; returns that folder and the row count, for
    :func:`commit_cells`, or ``None`` when the table is published already.

    With a Dask ``client`` a task of its cluster builds and writes the table (its workers have
    pandas and anndata loaded); without one, this process does.
    """
    final = PATHS.cells(dataset_id)
    if lake.is_published(final):
        return None
    stage = lake.open_stage(final)
    args = (lake.url(store), lake.url(f"{stage}/obs.parquet"), lake.storage_options, dataset_id)
    if client is None:
        rows = build_cells(*args)
    else:
        rows = client.submit(build_cells, *args, key=f"sclake-cells-{dataset_id}-{uuid.uuid4().hex[:8]}").result()
    return stage, rows


def commit_cells(lake: Lake, dataset_id: str, staged: tuple[str, int] | None) -> str:
    """Publish a table :func:`stage_cells` wrote (after the dataset's store); returns its lake path."""
    final = PATHS.cells(dataset_id)
    if staged is not None:
        stage, rows = staged
        lake.commit(stage, final, {"dataset_id": dataset_id, "rows": rows}, exist_ok=True)
        log.info("wrote obs of %s cells of dataset %s to %s", f"{rows:,}", dataset_id, lake.url(final))
    return PATHS.cells_obs(dataset_id)


def build_cells(store_url: str, out_url: str, storage_options: dict[str, Any], dataset_id: str) -> int:
    """Read the obs of the Zarr store at ``store_url`` and write it as the ``cells`` Parquet
    to ``out_url``; returns the row count. Runs in a Dask task or in the calling process."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.dataset import Dataset
    from pipelines.frames import categorical_values

    obs = Dataset(store_url, storage_options).obs
    frame = obs.copy()
    for col in frame.columns:
        if hasattr(frame[col], "cat"):
            frame[col] = categorical_values(frame[col])
    frame.insert(0, "cell_id", obs.index.astype(str))
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    meta = {**formats.parquet_encoding("cells-obs"), b"dataset_id": dataset_id.encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with fsspec.open(out_url, "wb", **storage_options) as f:
        pq.write_table(table, f)
    return table.num_rows


def committed_cells(lake: Lake) -> list[str]:
    """Lake paths of the published obs Parquet files."""
    files = lake.ls(PATHS.cells_dir, recursive=True)
    markers = {rel.rpartition("/")[0] for rel in files if rel.endswith("/" + COMMIT_MARKER)}
    return [rel for rel in files if rel.endswith("/obs.parquet") and rel.rpartition("/")[0] in markers]
