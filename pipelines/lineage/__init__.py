"""Lineage: which file, which model and which code produced a dataset's embeddings.

* MLflow: one run per dataset ingestion and one per (dataset, model) embedding nested
  under it (:func:`log_ingest_run`, :func:`log_embedding_run`, :func:`record_dataset_lineage`).
* The lake: run ids are also written to ``reports/<id>/lineage/``, and :func:`dataset_lineage`
  reads the whole chain (upload key → raw file → Zarr → validation → embeddings → runs).

Importing this package is cheap; MLflow is imported by the functions that log.
"""

from pipelines.lineage.chain import dataset_lineage, render_lineage
from pipelines.lineage.embedding_run import log_embedding_run, record_dataset_lineage
from pipelines.lineage.ingest_run import find_ingest_run, log_ingest_run
from pipelines.lineage.tracking import EXPERIMENT, tracking_uri

__all__ = [
    "EXPERIMENT",
    "dataset_lineage",
    "find_ingest_run",
    "log_embedding_run",
    "log_ingest_run",
    "record_dataset_lineage",
    "render_lineage",
    "tracking_uri",
]
