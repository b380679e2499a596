"""Ingestion: an uploaded ``.h5ad`` becomes ``raw/<id>.h5ad`` and the chunked ``zarr/<id>.zarr``.

Public API::

    ingest(settings, uri, *, client=None) -> IngestResult
    inspect_source(url, storage_options=None) -> SourceSpec

Modules: ``raw`` (upload identity, raw copy), ``source`` (reading the h5ad), ``writer``
(one Zarr part), ``convert`` (the Dask tasks), ``run`` (the step). The format is read
back with :mod:`pipelines.dataset`; it is specified in ``docs/ingest.md``.
"""

from pipelines.ingest.run import IngestResult, ingest, plan_parts
from pipelines.ingest.source import SourceSpec, inspect_source

__all__ = ["IngestResult", "SourceSpec", "ingest", "inspect_source", "plan_parts"]
