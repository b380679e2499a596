"""sclake ingestion: notice `.h5ad` uploads under `incoming/`, then for each file
ingest → validate → publish an asset event that schedules the embedding DAG.

Wiring only: every task is one step of `pipelines.orchestration.steps`
(`dagkit.step_task`, in the Airflow worker or in the worker image by execution mode).
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
    map_index_from,
    refusal_message,
    step_task,
)
from pipelines.orchestration.uploads import UploadsSensor
from pipelines.outcomes import QUARANTINED, VALIDATED

SENSOR_TIMEOUT_S = float(os.environ.get("SCLAKE_SENSOR_TIMEOUT_S", "3600"))
SENSOR_POKE_S = float(os.environ.get("SCLAKE_SENSOR_POKE_S", "5"))


@task(outlets=[DATASETS])
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
    # Mapped task instances are named by their upload's key (not 0, 1, 2 ...).
    named = {"map_index_template": map_index_from(uploads)}
    # Container limits of ingestion and validation: the default model's resource profile.
    model = configured_models()[0]

    @task_group
    def process_upload(key: str) -> None:
        ingested = step_task(
            "ingest_upload", key, items_from=uploads, task_id="ingest", model=model, pool="sclake_ingest",
            **named, **TRANSIENT_RETRIES,
        )  # fmt: skip
        validated = step_task(
            "validate_upload", ingested, items_from=uploads, task_id="validate", model=model, pool="sclake_validate",
            **named,
        )  # fmt: skip
        publish.override(**named)(validated)

    process_upload.expand(key=uploads.output)


sclake_ingest()
