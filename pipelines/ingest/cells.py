"""The ``cells`` table: ``cells/dataset_id=<id>/obs.parquet``, one per ingested dataset.

``cell_id`` (the h5ad's obs names) followed by the obs columns, categories as their values.
It is published by ingestion, right after the dataset's Zarr store and before the upload
leaves ``incoming/``, so a query only reads it (:mod:`pipelines.query`, view ``cells``).
"""

from __future__ import annotations

from pipelines import formats
from pipelines.lake import COMMIT_MARKER, PATHS, Lake
from pipelines.logs import get_logger

log = get_logger(__name__)


def write_cells(lake: Lake, dataset_id: str) -> str:
    """Publish the obs Parquet of a dataset from its Zarr store; returns its lake path.

    Idempotent: a dataset whose obs Parquet is already published is left as it is.
    """
    final = PATHS.cells(dataset_id)
    if lake.is_published(final):
        return PATHS.cells_obs(dataset_id)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.dataset import open_dataset

    obs = open_dataset(lake, dataset_id).obs
    frame = obs.copy()
    for col in frame.columns:
        if hasattr(frame[col], "cat"):
            frame[col] = frame[col].astype(frame[col].cat.categories.dtype)
    frame.insert(0, "cell_id", obs.index.astype(str))
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    meta = {**formats.parquet_encoding("cells-obs"), b"dataset_id": dataset_id.encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with lake.publishing(final, info={"dataset_id": dataset_id, "rows": table.num_rows}) as stage:
        with lake.open(f"{stage}/obs.parquet", "wb") as f:
            pq.write_table(table, f)
    log.info("wrote obs of %s cells of dataset %s to %s", f"{table.num_rows:,}", dataset_id, lake.url(final))
    return PATHS.cells_obs(dataset_id)


def committed_cells(lake: Lake) -> list[str]:
    """Lake paths of the published obs Parquet files."""
    files = lake.ls(PATHS.cells_dir, recursive=True)
    markers = {rel.rpartition("/")[0] for rel in files if rel.endswith("/" + COMMIT_MARKER)}
    return [rel for rel in files if rel.endswith("/obs.parquet") and rel.rpartition("/")[0] in markers]
