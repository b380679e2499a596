"""``sclake run``: one upload through every step of :mod:`pipelines.orchestration.steps` without Airflow."""

from __future__ import annotations

from typing import Any

from pipelines.errors import InputError
from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger
from pipelines.orchestration import steps
from pipelines.settings import Settings

log = get_logger(__name__)


def run_upload(settings: Settings, uri: str, models: list[str] | None = None) -> dict[str, Any]:
    """Ingest, validate, embed with each model, validate outputs, record lineage, annotate.

    Returns a JSON-able summary: dataset_id, outcome, and per model rows, the Parquet
    prefix and the MLflow run id. A quarantined upload raises ``InputError`` with the reason.
    """
    models = models or settings.model_list
    manifest = steps.process_upload(settings, uri, model=models[0])
    if manifest["outcome"] == steps.QUARANTINED:
        raise InputError(
            f"{uri} was quarantined ({manifest.get('code')}): {manifest.get('reason')}",
            f"see `sclake quarantine list`; the original is under quarantine/{manifest['dataset_id']}/",
            code=manifest.get("code") or "invalid_input",
        )
    dataset_id = manifest["dataset_id"]
    lake = Lake(settings)
    summary: dict[str, Any] = {"dataset_id": dataset_id, "outcome": manifest["outcome"], "models": {}}
    for model in models:
        if steps.datasets_to_embed(settings, model, [dataset_id]):
            emb = steps.embed(settings, dataset_id, model)
        else:
            log.info("%s: embeddings with %s already published", dataset_id, model)
            emb = {"dataset_id": dataset_id, "model": model}
        steps.validate_embeddings(settings, dataset_id, model)
        lin = steps.record_lineage(settings, dataset_id, model, embed_manifest=emb, upload_key=manifest.get("key"))
        annotated = steps.annotate(settings, {"dataset_id": dataset_id, "model": model})
        info = lake.commit_info(PATHS.embeddings(model, dataset_id))
        summary["models"][model] = {
            "rows": info.get("rows"),
            "parquet_prefix": lake.url(PATHS.embeddings(model, dataset_id)),
            "mlflow_run_id": lin["mlflow_run_id"],
            "annotations": annotated["annotations"],
        }
    first = summary["models"][models[0]]
    summary.update({k: first[k] for k in ("rows", "parquet_prefix", "mlflow_run_id", "annotations")})
    return summary
