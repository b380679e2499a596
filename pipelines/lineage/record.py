"""What lineage records, gathered from the lake and the process: manifests, versions, Airflow ids.

Lineage records are also kept in the lake (``reports/<id>/lineage/ingest.json`` and
``reports/<id>/lineage/model=<m>.json``, encoding ``sclake.lineage`` v1) so that
``sclake lineage`` shows the chain, MLflow run ids included, without MLflow.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.errors import LakeError
from pipelines.lake import COMMIT_MARKER, PATHS, Lake

RECORD_ENCODING = {"encoding-type": "sclake.lineage", "encoding-version": "1"}
MANIFEST_ENCODING = {"encoding-type": "sclake.embeddings-manifest", "encoding-version": "1"}
PACKAGES = ("sclake", "helical", "torch", "transformers", "anndata", "zarr", "dask", "duckdb", "mlflow", "numpy")
AIRFLOW_ENV = {
    "dag_id": "AIRFLOW_CTX_DAG_ID",
    "run_id": "AIRFLOW_CTX_DAG_RUN_ID",
    "task_id": "AIRFLOW_CTX_TASK_ID",
    "try_number": "AIRFLOW_CTX_TRY_NUMBER",
}
VALIDATION_FILES = ("validation.json", "gx_results.json")


def package_versions() -> dict[str, str]:
    """Installed versions of sclake and the libraries that shape its output (read from metadata, not imported)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The git commit of the sclake source tree when it runs from a checkout (``None`` in an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def airflow_ids(airflow: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``dag_id``, ``run_id``, ``task_id`` (and ``try_number``) of the Airflow task running this step.

    Taken from ``airflow`` when given (e.g. built from the task context), else from the
    ``AIRFLOW_CTX_*`` variables Airflow exports to a running task; empty outside Airflow.
    """
    if airflow:
        return {k: str(v) for k, v in airflow.items() if v is not None and k in AIRFLOW_ENV}
    return {k: os.environ[v] for k, v in AIRFLOW_ENV.items() if os.environ.get(v)}


def record_path(dataset_id: str, model: str | None = None) -> str:
    return PATHS.lineage_record(dataset_id, model)


def write_record(lake: Lake, dataset_id: str, model: str | None, record: Mapping[str, Any]) -> str:
    """Write a lineage record (one object: readers see the old or the new one, never half)."""
    rel = record_path(dataset_id, model)
    lake.write_json(rel, {**RECORD_ENCODING, **record})
    return rel


def read_record(lake: Lake, dataset_id: str, model: str | None = None) -> dict[str, Any] | None:
    rel = record_path(dataset_id, model)
    if not lake.exists(rel):
        return None
    data = lake.read_json(rel)
    if data.get("encoding-type") != RECORD_ENCODING["encoding-type"]:
        raise LakeError(f"{lake.url(rel)!r} is not a sclake lineage record")
    return data


def _decode_metadata(meta: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        key = k.decode(errors="replace")
        if key in ("ARROW:schema", "pandas"):
            continue
        text = v.decode(errors="replace")
        try:
            out[key] = json.loads(text) if text[:1] in "{[" else text
        except ValueError:
            out[key] = text
    return out


def embeddings_manifest(lake: Lake, model: str, dataset_id: str, *, checksums: str = "commit") -> dict[str, Any]:
    """Manifest of a published embeddings partition: every part's path, rows, bytes and SHA-256.

    Also the commit info of the ``_SUCCESS`` marker (its file list left out) and the first
    part's Parquet key-value metadata.

    Parameters
    ----------
    checksums
        ``"commit"``: the SHA-256 the writer recorded in the commit marker (computed when
        missing); ``"compute"``: read every part and hash it; ``"none"``: no checksums.

    Raises
    ------
    LakeError
        When the partition is not published.
    """
    import pyarrow.parquet as pq

    if checksums not in ("commit", "compute", "none"):
        raise ValueError(f"checksums {checksums!r} is not one of 'commit', 'compute', 'none'")
    prefix = PATHS.embeddings(model, dataset_id)
    if not lake.is_published(prefix):
        raise LakeError(
            f"embeddings of model {model!r} for dataset {dataset_id!r} are not published at {lake.url(prefix)!r}; "
            f"run `sclake embed {dataset_id} --model {model}` first"
        )
    commit = dict(lake.commit_info(prefix))
    recorded = {f.get("path"): f.get("sha256") for f in commit.pop("files", None) or [] if isinstance(f, dict)}
    parts, metadata, width = [], {}, None
    for rel in lake.ls(prefix, suffix=".parquet"):
        with lake.open(rel, "rb") as f:
            pf = pq.ParquetFile(f)
            if not parts:
                metadata = _decode_metadata(pf.schema_arrow.metadata)
                emb = pf.schema_arrow.field("embedding").type if "embedding" in pf.schema_arrow.names else None
                width = getattr(emb, "list_size", None)
            entry = {"path": rel, "rows": pf.metadata.num_rows, "bytes": lake.size(rel)}
        if checksums == "compute" or (checksums == "commit" and not recorded.get(rel)):
            entry["sha256"] = lake.sha256(rel)
        elif checksums == "commit":
            entry["sha256"] = recorded[rel]
        parts.append(entry)
    return {
        **MANIFEST_ENCODING,
        "model": model,
        "dataset_id": dataset_id,
        "prefix": lake.url(prefix),
        "rows": sum(p["rows"] for p in parts),
        "width": width,
        "parts": parts,
        "commit": commit,
        "parquet_metadata": metadata,
    }


def validation_files(lake: Lake, dataset_id: str, model: str | None = None) -> dict[str, bytes]:
    """The validation summary and GX results of a dataset (``model=None``) or of a model's embeddings.

    Returns ``{"<name>": bytes}`` for the files present (empty when not validated).
    """
    folder = PATHS.validation(dataset_id, model)
    return {name: lake.read_bytes(f"{folder}/{name}") for name in VALIDATION_FILES if lake.exists(f"{folder}/{name}")}


def published(lake: Lake, rel: str) -> dict[str, Any] | None:
    """Commit info of a published directory, ``None`` when it is not published."""
    marker = f"{rel.strip('/')}/{COMMIT_MARKER}"
    return lake.read_json(marker) if lake.exists(marker) else None
