"""The MLflow run of a dataset's ingestion: one per dataset, found again by its tags."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.lake import PATHS, Lake, check_dataset_id
from pipelines.lineage import record, tracking
from pipelines.lineage.common import (
    as_dict,
    common_tags,
    dataset_facts,
    failed_on_error,
    is_number,
    live_runs,
    split_values,
    validation_summary,
    validation_tags,
)
from pipelines.logs import get_logger

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)


def _dataset_id_of(ingest_result: Any) -> str:
    if isinstance(ingest_result, str):
        return check_dataset_id(ingest_result)
    data = as_dict(ingest_result)
    if "dataset_id" not in data:
        raise ValueError(f"ingest result {ingest_result!r} has no dataset_id")
    return check_dataset_id(str(data["dataset_id"]))


def log_ingest_run(
    settings: Settings,
    ingest_result: Any,
    *,
    upload_key: str | None = None,
    validation: Any = None,
    airflow: Mapping[str, Any] | None = None,
    started_ms: int | None = None,
) -> str:
    """The MLflow run of a dataset's ingestion (created once per dataset; later calls return it).

    Parameters
    ----------
    settings
        Lake and MLflow settings.
    ingest_result
        What ``ingest`` returned (an ``IngestResult``, its dict, or just the dataset id).
    upload_key
        The ``incoming/`` key the file was uploaded to.
    validation
        The dataset's validation result; default: ``validation.json`` from the lake, when present.
    airflow
        ``dag_id``, ``run_id``, ``task_id``; default: Airflow's ``AIRFLOW_CTX_*`` variables.

    Returns
    -------
    str
        The MLflow run id.
    """
    lake = Lake(settings)
    dataset_id = _dataset_id_of(ingest_result)
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {tracking.TAG_KIND: tracking.KIND_INGEST, tracking.TAG_DATASET: dataset_id}
    live = live_runs(tracking.find_runs(client, exp, tags))
    old = record.read_record(lake, dataset_id) or {}
    if live:
        existing = live[0]
        run_id = existing.info.run_id
        if existing.info.status == "RUNNING":  # being logged by a concurrent step right now
            return run_id
        if "validation.outcome" not in existing.data.tags:  # validated after the run was logged
            _log_validation(client, run_id, lake, dataset_id, validation_summary(lake, dataset_id, validation))
        upload_key = upload_key or old.get("upload_key") or existing.data.params.get("upload_key")
        if old.get("run_id") != run_id or old.get("upload_key") != upload_key:
            _write_ingest_record(lake, settings, dataset_id, run_id, upload_key)
        return run_id

    attrs, schema = dataset_facts(lake, dataset_id)
    raw_rel = PATHS.raw(dataset_id)
    result = as_dict(ingest_result) if not isinstance(ingest_result, str) else {}
    skip = ("dataset_id", "already")  # "already": whether this call found the dataset ingested before
    metrics, params = split_values("ingest", {k: v for k, v in result.items() if k not in skip})
    run_tags = common_tags(tracking.KIND_INGEST, dataset_id, airflow)
    run_id = tracking.start_run(client, exp, f"ingest {dataset_id}", run_tags, start_time=started_ms)
    with failed_on_error(client, run_id):
        params.update(
            {
                "dataset_id": dataset_id,
                "upload_key": upload_key,
                "raw": lake.url(raw_rel),
                "zarr": lake.url(PATHS.zarr(dataset_id)),
                "lake_uri": settings.lake_uri,
            }
        )
        params.update(tracking.flat_params("zarr", {k: v for k, v in attrs.items() if not is_number(v)}))
        params.update(tracking.flat_params("versions", record.package_versions()))
        metrics.update({f"zarr.{k}": v for k, v in attrs.items() if is_number(v)})
        if lake.exists(raw_rel):
            metrics["raw.bytes"] = lake.size(raw_rel)
        tracking.log_run_data(client, run_id, params=params, metrics=metrics)
        tracking.log_dataset_input(
            client, run_id, source_url=lake.url(raw_rel), dataset_id=dataset_id, schema=schema, context="ingest"
        )
        _log_validation(client, run_id, lake, dataset_id, validation_summary(lake, dataset_id, validation))
    client.set_terminated(run_id, "FINISHED")
    # Two steps of one dataset (one per model) may have logged at the same time: the oldest run wins.
    winner = live_runs(tracking.find_runs(client, exp, tags))[0].info.run_id
    if winner != run_id:
        client.delete_run(run_id)
        run_id = winner
    _write_ingest_record(lake, settings, dataset_id, run_id, upload_key)
    log.info("MLflow ingest run %s for dataset %s", run_id, dataset_id)
    return run_id


def _log_validation(client: Any, run_id: str, lake: Lake, dataset_id: str, checks: Mapping[str, Any]) -> None:
    """The dataset validation's outcome as tags and its files as ``validation/`` artifacts."""
    if not checks:
        return
    tracking.log_run_data(client, run_id, tags=validation_tags("validation", checks))
    files = {f"validation/{k}": v for k, v in record.validation_files(lake, dataset_id).items()}
    if "validation/validation.json" not in files:
        files["validation/validation.json"] = json.dumps(checks, indent=2, default=str).encode()
    tracking.log_artifacts(client, run_id, files)


def _write_ingest_record(lake: Lake, settings: Settings, dataset_id: str, run_id: str, upload_key: str | None) -> None:
    record.write_record(
        lake,
        dataset_id,
        None,
        {
            "kind": tracking.KIND_INGEST,
            "dataset_id": dataset_id,
            "upload_key": upload_key,
            "run_id": run_id,
            "tracking_uri": tracking.tracking_uri(settings),
            "experiment": tracking.EXPERIMENT,
        },
    )


def find_ingest_run(settings: Settings, dataset_id: str) -> str | None:
    """Run id of the dataset's ingest run: from the lake record, else by searching MLflow's tags."""
    rec = record.read_record(Lake(settings), dataset_id)
    if rec and rec.get("run_id") and rec.get("tracking_uri") == tracking.tracking_uri(settings):
        return rec["run_id"]
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {tracking.TAG_KIND: tracking.KIND_INGEST, tracking.TAG_DATASET: dataset_id}
    live = live_runs(tracking.find_runs(client, exp, tags))
    return live[0].info.run_id if live else None
