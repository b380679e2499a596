"""sclake ingestion: notice `.h5ad` uploads under `incoming/`, then for each file
ingest → validate → publish an asset event that schedules the embedding DAG.

Wiring only: every task calls one step of `pipelines.orchestration.steps`.
- The sensor waits deferred in the triggerer (no worker slot) until uploads exist, and the
  DAG runs continuously with one active run, so a run starts only when there is work.
- Ingestion retries with exponential backoff (a transient object-store error); a file that
  cannot be used is quarantined and never retried.
- Ingestion runs in the `sclake_ingest` pool (one slot): an upload is never converted twice,
  and the same bytes under another name are recognised by their dataset id. Validation runs
  in the `sclake_validate` pool (one slot): a dataset id is validated, and announced, once.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipelines.orchestration.dagkit import (
    DATASETS,
    DEFAULT_ARGS,
    TRANSIENT_RETRIES,
    as_manifest,
    configured_models,
    container_step,
    execution_mode,
    map_index_from,
    mapped_item,
    refusal_message,
    run_step,
    step_command,
    upstream_manifest,
)
from pipelines.orchestration.uploads import UploadsSensor
from pipelines.outcomes import QUARANTINED, VALIDATED

SENSOR_TIMEOUT_S = float(os.environ.get("SCLAKE_SENSOR_TIMEOUT_S", "3600"))
SENSOR_POKE_S = float(os.environ.get("SCLAKE_SENSOR_POKE_S", "15"))
# Mapped task instances are named by their upload's key (not 0, 1, 2 ...).
UPLOAD_KEY = map_index_from("wait_for_uploads")


@task(outlets=[DATASETS], map_index_template=UPLOAD_KEY)
def publish(manifest: Any, outlet_events=None) -> dict[str, Any]:
    """Emit the dataset's asset event (the embedding DAG's schedule) when it passed validation.

    The three other ends look different in Airflow: a refused upload fails this task
    without retry (its reason code and what to do are the message), the same bytes seen
    before skip it, and a transient error retries the ingest task.
    """
    m = as_manifest(manifest)
    outcome = m.get("outcome")
    if outcome == QUARANTINED:
        raise AirflowFailException(refusal_message(m))
    if outcome not in VALIDATED:
        raise AirflowSkipException(f"{m.get('key')}: already ingested as {m.get('dataset_id')}; nothing new")
    outlet_events[DATASETS].extra = {"dataset_id": m["dataset_id"], "key": m["key"]}
    return m


@task(pool="sclake_ingest", map_index_template=UPLOAD_KEY, **TRANSIENT_RETRIES)
def ingest(key: str) -> dict[str, Any]:
    return run_step("ingest_upload", key=key)


@task(pool="sclake_validate", map_index_template=UPLOAD_KEY)
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
                map_index_template=UPLOAD_KEY,
                **TRANSIENT_RETRIES,
            )
            val = container_step(
                "validate",
                step_command("validate_upload", manifest=upstream_manifest("process_upload.ingest")),
                model=model,
                pool="sclake_validate",
                map_index_template=UPLOAD_KEY,
            )
            ing >> val
            publish(val.output)

    process_upload.expand(key=uploads.output)


sclake_ingest()
