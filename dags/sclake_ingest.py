"""sclake ingestion: notice `.h5ad` uploads under `incoming/`, then for each file
ingest → validate → publish an asset event that schedules the embedding DAG.

Wiring only: every task calls one step of `pipelines.orchestration.steps`.
- The sensor waits deferred in the triggerer (no worker slot) until uploads exist, and the
  DAG runs continuously with one active run, so a run starts only when there is work.
- Ingestion retries with exponential backoff (a transient object-store error); a file that
  cannot be used is quarantined and never retried.
- Ingestion runs in the `sclake_ingest` pool (one slot): an upload is never converted twice,
  and the same bytes under another name are recognised by their dataset id.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from pipelines.orchestration.dagkit import (
    DATASETS,
    DEFAULT_ARGS,
    TRANSIENT_RETRIES,
    as_manifest,
    configured_models,
    container_step,
    execution_mode,
    mapped_item,
    run_step,
    step_command,
    upstream_manifest,
)
from pipelines.orchestration.uploads import UploadsSensor

SENSOR_TIMEOUT_S = float(os.environ.get("SCLAKE_SENSOR_TIMEOUT_S", "3600"))
SENSOR_POKE_S = float(os.environ.get("SCLAKE_SENSOR_POKE_S", "15"))
GOOD = ("passed", "warned")


@task(outlets=[DATASETS])
def publish(manifest: Any, outlet_events=None) -> dict[str, Any]:
    """Emit the dataset's asset event (the embedding DAG's schedule) when it passed validation."""
    m = as_manifest(manifest)
    if m.get("outcome") not in GOOD:
        raise AirflowSkipException(f"{m.get('key')}: {m.get('outcome')} ({m.get('reason', 'nothing new')})")
    outlet_events[DATASETS].extra = {"dataset_id": m["dataset_id"], "key": m["key"]}
    return m


@task(pool="sclake_ingest", **TRANSIENT_RETRIES)
def ingest(key: str) -> dict[str, Any]:
    return run_step("ingest_upload", key=key)


@task
def validate(manifest: dict[str, Any]) -> dict[str, Any]:
    return run_step("validate_upload", manifest=manifest)


@dag(
    dag_id="sclake_ingest",
    schedule="@continuous",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["sclake"],
    doc_md=__doc__,
)
def sclake_ingest() -> None:
    uploads = UploadsSensor(
        task_id="wait_for_uploads",
        poke_interval=SENSOR_POKE_S,
        timeout=SENSOR_TIMEOUT_S,
        retries=2,
        retry_delay=timedelta(seconds=10),
    )

    if execution_mode() == "local":

        @task_group
        def process_upload(key: str) -> None:
            publish(validate(ingest(key)))

    else:
        # Container limits of ingestion and validation: the default model's resource profile.
        model = configured_models()[0]

        @task_group
        def process_upload(key: str) -> None:
            ing = container_step(
                "ingest",
                step_command("ingest_upload", key=mapped_item("wait_for_uploads")),
                model=model,
                pool="sclake_ingest",
                **TRANSIENT_RETRIES,
            )
            val = container_step(
                "validate",
                step_command("validate_upload", manifest=upstream_manifest("process_upload.ingest")),
                model=model,
            )
            ing >> val
            publish(val.output)

    process_upload.expand(key=uploads.output)


sclake_ingest()
