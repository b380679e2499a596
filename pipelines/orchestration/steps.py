"""The pipeline's steps as plain functions over small manifests (dicts of ids and URIs).

Airflow tasks, the ``sclake step`` command (used by the container execution modes) and
``sclake run`` call these and nothing else; each takes ``Settings`` and JSON-able
arguments and returns a JSON-able manifest, never arrays or data frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger
from pipelines.orchestration.outcomes import (
    ALREADY,
    FINISHED_MS,
    INGESTED,
    PASSED,
    QUARANTINED,
    STARTED_MS,
    WARNED,
    now_ms,
)
from pipelines.settings import Settings

log = get_logger(__name__)


def ingest_upload(settings: Settings, key: str) -> dict[str, Any]:
    """Ingest one upload (a lake key under ``incoming/`` or any URI).

    Unusable files are quarantined here (no retry can fix them); transient errors (the
    object store unreachable) propagate so that the caller retries.
    """
    from pipelines.errors import InputError
    from pipelines.ingest import ingest
    from pipelines.metrics import step_metrics
    from pipelines.quarantine import quarantine_upload

    started = now_ms()
    lake = Lake(settings)
    # A URI or a local file as given; otherwise a key relative to the lake (e.g. ``incoming/x.h5ad``).
    uri = key if "://" in key or Path(key).exists() else lake.url(key)
    with step_metrics(settings, "ingest") as m:
        try:
            result = ingest(settings, uri)
        except InputError as e:
            q = quarantine_upload(settings, uri, e)
            m.upload(QUARANTINED)
            m.quarantine(e.code)
            log.warning("quarantined %s: %s", uri, e)
            return {
                "key": key,
                "dataset_id": q.dataset_id,
                "outcome": QUARANTINED,
                "code": e.code,
                "reason": str(e),
                "hint": q.hint,
            }
        if result.already:
            m.upload(ALREADY)
        else:
            m.upload(INGESTED)
            m.cells(result.n_obs)
    outcome = ALREADY if result.already else INGESTED
    return {"key": key, "dataset_id": result.dataset_id, "outcome": outcome, "n_obs": result.n_obs, STARTED_MS: started}


def validate_upload(settings: Settings, manifest: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Validate an ingested dataset (unless it was already); quarantine it when it fails.

    A dataset is validated once: an upload whose dataset was validated meanwhile (the same
    bytes uploaded twice in one batch, say) comes back as ``already``, so that only one
    upload announces it. Callers run validations one at a time (the DAG's
    ``sclake_validate`` pool), which makes this check race-free. An upload recognised as
    ``already`` ingested is validated only when an earlier run stopped between ingestion and
    validation. Quarantined uploads pass through.
    """
    if manifest.get("outcome") not in (INGESTED, ALREADY):
        return manifest
    from pipelines.validate import is_validated

    if is_validated(Lake(settings), manifest["dataset_id"]):
        return {**manifest, "outcome": ALREADY}
    from pipelines.metrics import step_metrics
    from pipelines.quarantine import quarantine_dataset
    from pipelines.validate import validate_dataset

    model = model or settings.model_list[0]
    with step_metrics(settings, "validate", model=model) as m:
        result = validate_dataset(settings, manifest["dataset_id"], model=model)
        m.cells(manifest.get("n_obs") or 0)
        if not result.ok:
            q = quarantine_dataset(settings, manifest["dataset_id"], result, upload=manifest.get("key"))
            m.quarantine(result.code or "invalid_input")
    if not result.ok:
        log.warning("quarantined %s: %s", manifest.get("key"), result.summary_line())
        return {
            **manifest,
            "outcome": QUARANTINED,
            "code": result.code,
            "reason": result.summary_line(),
            "hint": q.hint,
        }
    # The dataset's ingestion run in MLflow, with the upload key (embedding runs nest under it).
    from pipelines.lineage import log_ingest_run

    run_id = log_ingest_run(
        settings,
        manifest["dataset_id"],
        upload_key=manifest.get("key"),
        validation=result,
        started_ms=manifest.get(STARTED_MS),
    )
    return {
        **manifest,
        "outcome": WARNED if result.warnings else PASSED,
        "validation": result.summary_line(),
        "mlflow_ingest_run_id": run_id,
    }


def datasets_to_embed(settings: Settings, model: str, dataset_ids: list[str] | None = None) -> list[str]:
    """Datasets that need embeddings with ``model``: the given ones, else every validated dataset
    without published embeddings (so a manual run catches up on anything missed)."""
    from pipelines.validate import is_validated

    lake = Lake(settings)
    if dataset_ids is None:
        dataset_ids = sorted(
            p.split("/")[-1].removesuffix(".zarr") for p in lake.ls(PATHS.zarr_dir) if p.endswith(".zarr")
        )
    return [
        d
        for d in dict.fromkeys(dataset_ids)
        if lake.is_published(PATHS.zarr(d))
        and is_validated(lake, d)
        and not lake.is_published(PATHS.embeddings(model, d))
    ]


def embed(
    settings: Settings, dataset_id: str, model: str, device: str | None = None, precision: str | None = None
) -> dict[str, Any]:
    """Tokenise and embed one dataset with one model; idempotent (published output is kept)."""
    from pipelines.embed import embed_dataset
    from pipelines.metrics import step_metrics

    started = now_ms()
    with step_metrics(settings, "embed", model=model, device=device or "auto") as m:
        result = embed_dataset(settings, dataset_id, model, device=device, precision=precision)
        summary = result.summary()
        m.set_labels(device=summary.get("device"))
        m.cells(summary.get("rows_written", summary.get("rows", 0)))
    return {"dataset_id": dataset_id, "model": model, **summary, STARTED_MS: started, FINISHED_MS: now_ms()}


def validate_embeddings(settings: Settings, dataset_id: str, model: str) -> dict[str, Any]:
    """Run the embedding-output suite; raises when the output is wrong (it should never be)."""
    from pipelines.validate import validate_embeddings as check

    result = check(settings, dataset_id, model)
    return {"dataset_id": dataset_id, "model": model, "outcome": result.outcome}


def record_lineage(
    settings: Settings,
    dataset_id: str,
    model: str,
    embed_manifest: dict[str, Any] | None = None,
    upload_key: str | None = None,
) -> dict[str, Any]:
    """One MLflow run per (dataset, model), linked to the dataset's ingestion run."""
    from pipelines.lineage import record_dataset_lineage

    run_id = record_dataset_lineage(settings, dataset_id, model, embed_manifest=embed_manifest, upload_key=upload_key)
    return {"dataset_id": dataset_id, "model": model, "mlflow_run_id": run_id}


STEPS = {
    "ingest_upload": ingest_upload,
    "validate_upload": validate_upload,
    "embed": embed,
    "validate_embeddings": validate_embeddings,
    "record_lineage": record_lineage,
}
