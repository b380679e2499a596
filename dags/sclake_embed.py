"""sclake embeddings: scheduled on the datasets asset, and every few minutes to catch up; for
every configured model, embed each new dataset → validate the outputs → record lineage in MLflow →
annotate it with every champion annotator registered for the model (none: nothing to do).

Wiring only: every task is one step of `pipelines.orchestration.steps` (`dagkit.step_task`
for the embedding itself, in the Airflow worker or in the worker image by execution mode;
the output checks, lineage and annotation in the Airflow worker). Embedding tasks
run in the Airflow pool and queue of the model's resource profile (a GPU pool sized to the
GPUs present), so GPU work never oversubscribes. Outputs are idempotent by dataset id: a
dataset whose embeddings are already published is not embedded again.

No dataset waits for a later upload: every run embeds the datasets its asset events name
*and* every other validated dataset still without embeddings (an event that arrived while a
run was queued or running is handled by the next run), and a catch-up run starts on its own
every `SCLAKE_EMBED_CATCH_UP_MINUTES` (10) minutes. A run with nothing to do skips at once.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task, task_group

from pipelines.orchestration.dagkit import (
    DATASETS,
    DEFAULT_ARGS,
    as_manifest,
    configured_models,
    map_index_from,
    profile_for,
    run_step,
    step_task,
    task_settings,
)

CATCH_UP_MINUTES = int(os.environ.get("SCLAKE_EMBED_CATCH_UP_MINUTES", "10"))


@task
def pending(model: str, triggering_asset_events=None) -> list[str]:
    """Datasets named by the triggering asset events first, then every other one still missing."""
    from pipelines.orchestration.steps import datasets_to_embed

    settings = task_settings()
    ids = [
        event.extra["dataset_id"]
        for events in (triggering_asset_events or {}).values()
        for event in events
        if (event.extra or {}).get("dataset_id")
    ]
    named = datasets_to_embed(settings, model, ids) if ids else []
    return list(dict.fromkeys([*named, *datasets_to_embed(settings, model, None)]))


@task
def validate_outputs(manifest: Any) -> dict[str, Any]:
    m = as_manifest(manifest)
    return run_step("validate_embeddings", dataset_id=m["dataset_id"], model=m["model"])


@task
def lineage(manifest: Any, checked: dict[str, Any]) -> dict[str, Any]:
    m = as_manifest(manifest)
    return run_step("record_lineage", dataset_id=m["dataset_id"], model=m["model"], embed_manifest=m)


@task
def annotate(manifest: Any, recorded: dict[str, Any]) -> dict[str, Any]:
    """Every champion annotator of the model over the new embeddings (after lineage: the
    annotation runs nest under the embedding run). Like lineage, it runs in the Airflow worker
    in every execution mode: it talks to MLflow's registry, and predicting is light."""
    m = as_manifest(manifest)
    return run_step("annotate", manifest={"dataset_id": m["dataset_id"], "model": m["model"]})


def model_group(model: str) -> None:
    """pending → per dataset: embed → validate outputs → lineage → annotate."""
    profile = profile_for(model)
    pool = {"pool": profile.airflow_pool, "queue": profile.airflow_queue} if profile else {}
    datasets = pending.override(task_id="pending")(model)
    # Mapped task instances are named by their dataset id (not 0, 1, 2 ...).
    named = {"map_index_template": map_index_from(datasets)}

    @task_group(group_id="dataset")
    def per_dataset(dataset_id: str) -> None:
        out = step_task(
            "embed", dataset_id, items_from=datasets, task_id="embed", model=model, fixed={"model": model},
            **pool, **named,
        )  # fmt: skip
        recorded = lineage.override(**named)(out, validate_outputs.override(**named)(out))
        annotate.override(**named)(out, recorded)

    per_dataset.expand(dataset_id=datasets)


def _group_id(model: str) -> str:
    return "embed_" + re.sub(r"[^A-Za-z0-9_]", "_", model)


@dag(
    dag_id="sclake_embed",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(f"*/{CATCH_UP_MINUTES} * * * *", timezone="UTC"), assets=[DATASETS]
    ),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["sclake"],
    doc_md=__doc__,
)
def sclake_embed() -> None:
    for model in configured_models():
        task_group(group_id=_group_id(model))(model_group)(model)


sclake_embed()
