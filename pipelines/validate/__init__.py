"""Validation of ingested datasets and of embedding outputs with Great Expectations.

The suites are data (``schemas/expectations/*.json``); this package computes the small
aggregate tables they validate (per part, with Dask, never loading X whole), runs them,
decides the outcome (``pass`` / ``pass_with_warnings`` / ``fail``), explains a failure in
words a user can act on, and publishes the results and GX Data Docs under
``reports/<dataset_id>/``. Importing it is cheap: Great Expectations is imported when a
validation runs.

Public API
----------
validate_dataset(settings, dataset_id, model=None) -> ValidationResult
validate_embeddings(settings, dataset_id, model) -> ValidationResult
validated_cells(lake, dataset_id) -> dict[int, np.ndarray]   (kept rows per part)
is_validated(lake, dataset_id) -> bool
"""

from pipelines.validate.embeddings import EmbeddingCheckError, validate_embeddings
from pipelines.validate.outcome import FAIL, PASS, WARN, ValidationResult
from pipelines.validate.report import is_validated, read_summary, validated_cell_ids, validated_cells
from pipelines.validate.run import validate_dataset

__all__ = [
    "FAIL",
    "PASS",
    "WARN",
    "EmbeddingCheckError",
    "ValidationResult",
    "is_validated",
    "read_summary",
    "validate_dataset",
    "validate_embeddings",
    "validated_cell_ids",
    "validated_cells",
]
