"""Ingestion: an uploaded ``.h5ad`` becomes ``raw/<id>.h5ad`` and the chunked ``zarr/<id>.zarr``.

Public API::

    ingest(settings, uri, *, client=None) -> IngestResult
    inspect_source(url, storage_options=None) -> SourceSpec

Modules: ``raw`` (upload identity, raw copy), ``source`` (reading the h5ad), ``store`` (the
Zarr store: plan, Dask conversion, publish), ``cells`` (the obs table), ``writer``
(one Zarr part), ``convert`` (the Dask tasks), ``run`` (the step). The format is read
back with :mod:`pipelines.dataset`; it is specified in ``docs/ingest.md``.
"""

from typing import Any

from pipelines.ingest.run import IngestResult, ingest
from pipelines.ingest.store import plan_parts

__all__ = ["IngestResult", "SourceSpec", "ingest", "inspect_source", "plan_parts"]


def __getattr__(name: str) -> Any:
    # The source readers import h5py, pandas and anndata: loaded when first asked for.
    if name in ("SourceSpec", "inspect_source"):
        from pipelines.ingest import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
