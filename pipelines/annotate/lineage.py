"""Lineage of an annotation: an MLflow run nested under the dataset's embedding run, a QC plot
coloured by the predicted labels, and a record in the lake (``sclake lineage`` reads it)."""

from __future__ import annotations

import json
import time
from typing import Any

from pipelines.annotate import registry
from pipelines.annotate.data import EmbeddingParts
from pipelines.lake import PATHS, Lake
from pipelines.lineage import tracking
from pipelines.lineage.common import common_tags, failed_on_error, finished_run
from pipelines.logs import get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

KIND_ANNOTATION = "annotation"


def embedding_run_id(settings: Settings, dataset_id: str, model: str) -> str | None:
    """The dataset's finished embedding run with ``model``, from its lineage record or MLflow."""
    from pipelines.lineage.record import read_record

    rec = read_record(Lake(settings), dataset_id, model) or {}
    if rec.get("run_id"):
        return rec["run_id"]
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {tracking.TAG_KIND: tracking.KIND_EMBEDDING, tracking.TAG_DATASET: dataset_id, tracking.TAG_MODEL: model}
    found = finished_run(tracking.find_runs(client, exp, tags))
    return found.info.run_id if found else None


def log_annotation(
    settings: Settings,
    emb: EmbeddingParts,
    ann: registry.Annotator,
    info: dict[str, Any],
    *,
    started: float,
    airflow: dict[str, Any] | None = None,
) -> str:
    """Log the annotation run (nested under the embedding run), draw its QC plot and write its record.

    Returns the MLflow run id.
    """
    from pipelines.qcplot import write_qc_plot

    lake = Lake(settings)
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    parent = embedding_run_id(settings, emb.dataset_id, emb.model)
    final = PATHS.annotations(emb.model, ann.name, emb.dataset_id)
    tags = {
        **common_tags(KIND_ANNOTATION, emb.dataset_id, airflow),
        tracking.TAG_MODEL: emb.model,
        "sclake.annotator": ann.name,
        "sclake.annotator_version": ann.version,
        "sclake.registered_model": ann.registered,
    }
    if parent:
        tags[tracking.TAG_PARENT] = parent
    run_id = tracking.start_run(
        client, exp, f"annotate {emb.dataset_id} {ann.name} v{ann.version}", tags, int(started * 1000)
    )
    with failed_on_error(client, run_id):
        params = {
            "annotator": ann.name,
            "registered_model": ann.registered,
            "annotator_version": ann.version,
            "training_run_id": ann.run_id,
            "method": ann.method,
            "label_column": ann.label,
            "reference": ann.reference,
            "threshold": ann.threshold,
            "classes": len(ann.classes),
            "annotations": lake.url(final),
            "embeddings": lake.url(PATHS.embeddings(emb.model, emb.dataset_id)),
        }
        rows = int(info["rows"])
        metrics = {
            "cells": rows,
            "unknown_cells": info["unknown"],
            "unknown_share": info["unknown_share"],
            "cells_per_s": info.get("cells_per_second"),
            "seconds": time.time() - started,
            "parts_resumed": info.get("parts_resumed", 0),
        }
        tracking.log_run_data(client, run_id, params=params, metrics=metrics)
        files = {"labels.json": json.dumps(info.get("labels", {}), indent=1).encode()}
        plot = write_qc_plot(settings, emb.dataset_id, emb.model, lake=lake, annotator=ann.name)
        files[f"qc/{emb.model}-{ann.name}.png"] = plot.png
        tracking.log_artifacts(client, run_id, files)
    client.set_terminated(run_id, "FINISHED")
    record = {
        "dataset_id": emb.dataset_id,
        "model": emb.model,
        "annotator": ann.name,
        "registered_model": ann.registered,
        "annotator_version": ann.version,
        "training_run_id": ann.run_id,
        "reference": ann.reference,
        "threshold": ann.threshold,
        "mlflow_run_id": run_id,
        "embedding_run_id": parent,
        "annotations": lake.url(final),
        "qc_plot": lake.url(plot.path),
        "rows": rows,
        "unknown_share": info["unknown_share"],
    }
    lake.write_json(PATHS.annotation_record(emb.dataset_id, emb.model, ann.name), record)
    log.info("MLflow annotation run %s for dataset %s, %s", run_id, emb.dataset_id, ann.describe())
    return run_id


def annotation_lineage(lake: Lake, dataset_id: str, model: str) -> list[dict[str, Any]]:
    """Every published annotation of a dataset's ``model`` embeddings, with its record (for ``sclake lineage``)."""
    out = []
    root = f"{PATHS.annotations_dir}/model={model}"
    for rel in lake.ls(root):
        name = rel.rstrip("/").rsplit("/", 1)[-1].removeprefix("annotator=")
        try:
            final = PATHS.annotations(model, name, dataset_id)
        except ValueError:
            continue
        if not lake.is_published(final):
            continue
        info = lake.commit_info(final)
        rec_path = PATHS.annotation_record(dataset_id, model, name)
        rec = lake.read_json(rec_path) if lake.exists(rec_path) else {}
        out.append(
            {
                "annotator": name,
                "registered_model": info.get("registered_model"),
                "annotator_version": info.get("annotator_version"),
                "path": lake.url(final),
                "rows": info.get("rows"),
                "unknown_share": info.get("unknown_share"),
                "labels": info.get("labels"),
                "mlflow_run_id": rec.get("mlflow_run_id"),
                "training_run_id": info.get("training_run_id"),
                "qc_plot": rec.get("qc_plot"),
            }
        )
    return out
