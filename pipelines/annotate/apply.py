"""Annotating a dataset: every champion annotator of a model over its embeddings, part by part.

Output, per annotator: ``annotations/model=<m>/annotator=<name>/dataset_id=<id>/part-*.parquet``
(``cell_id``, ``label``, ``probability``, ``best_label``; ``label`` is ``unknown`` below the
annotator's threshold), one file per embeddings part, staged and published at once like every
other output. A part already staged by the same annotator version is kept, so a crashed run
resumes where it stopped. The registry version is in each file's metadata, in the commit
marker, in the lineage record and in the MLflow run nested under the embedding run.

A dataset annotated by an older version stays as it is: new uploads never re-annotate
silently. ``sclake annotate apply ID`` (``replace=True``) re-annotates with the champion.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np

from pipelines import formats
from pipelines.annotate import registry
from pipelines.annotate.data import AnnotationError, EmbeddingParts, embedding_parts, iter_parts, matrix
from pipelines.embed.writer import parquet_bytes, staged_metadata
from pipelines.lake import PATHS, Lake
from pipelines.logs import Progress, get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

UNKNOWN = "unknown"
BATCH_ROWS = 8192
# Outcomes of one (dataset, annotator)
ANNOTATED, ALREADY, STALE = "annotated", "already", "stale"


def annotations_table(cell_ids: Any, proba: np.ndarray, classes: np.ndarray, threshold: float, meta: dict) -> Any:
    """One annotations part: ``cell_id``, ``label`` (``unknown`` below ``threshold``), ``probability``,
    ``best_label``."""
    import pyarrow as pa

    best = proba.argmax(axis=1)
    p = proba[np.arange(len(best)), best].astype(np.float32)
    finite = np.isfinite(p)
    p[~finite] = 0.0
    best_label = classes[best].astype(object)
    best_label[~finite] = UNKNOWN
    label = np.where((p >= threshold) & finite, best_label, UNKNOWN)
    table = pa.table(
        {
            "cell_id": pa.array(cell_ids).cast(pa.string()),
            "label": pa.array(label.tolist(), pa.string()),
            "probability": pa.array(p, pa.float32()),
            "best_label": pa.array(best_label.tolist(), pa.string()),
        }
    )
    meta = {**formats.encoding("annotations"), **meta}
    return table.replace_schema_metadata({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})


def predict(classifier: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities in batches (rows with a NaN embedding get NaN probabilities)."""
    n_classes = len(classifier.classes_)
    out = np.full((len(x), n_classes), np.nan, dtype=np.float32)
    ok = np.isfinite(x).all(axis=1)
    rows = np.flatnonzero(ok)
    for start in range(0, len(rows), BATCH_ROWS):
        sel = rows[start : start + BATCH_ROWS]
        out[sel] = classifier.predict_proba(x[sel])
    return out


def _part_meta(emb: EmbeddingParts, ann: registry.Annotator, part: int) -> dict[str, Any]:
    return {
        "dataset_id": emb.dataset_id,
        "part": str(part),
        "model": emb.model,
        "annotator": ann.name,
        "registered_model": ann.registered,
        "annotator_version": str(ann.version),
        "threshold": str(ann.threshold),
        "label_column": ann.label,
        "training_run_id": ann.run_id or "",
    }


def write_annotations(
    settings: Settings, emb: EmbeddingParts, ann: registry.Annotator, *, replace: bool = False
) -> dict[str, Any]:
    """Predict every part of ``emb`` with ``ann`` into its staging folder and publish it.

    Returns the commit info: rows, cells per label, unknown share, the annotator's version.
    """
    lake = Lake(settings)
    final = PATHS.annotations(emb.model, ann.name, emb.dataset_id)
    stage = lake.open_stage(final)
    done = {
        rel.rsplit("/", 1)[-1]
        for rel, meta, _ in staged_metadata(lake, stage, "annotations")
        if meta.get("annotator_version") == str(ann.version) and meta.get("registered_model") == ann.registered
    }
    counts: Counter[str] = Counter()
    for rel in lake.staged_parts(stage):
        if rel.rsplit("/", 1)[-1] in done:
            counts.update(_labels_of(lake, rel))
    if done:
        log.info("%s / %s: %d part(s) staged by an earlier run are kept", emb.dataset_id, ann.describe(), len(done))
    classifier = registry.load_classifier(settings, ann)
    classes = np.asarray(classifier.classes_).astype(str)
    progress = Progress(f"annotate {emb.dataset_id} with {ann.name}", total=emb.rows or None, unit="cells")
    progress.advance(sum(counts.values()))
    for rel, table in iter_parts(lake, emb):
        name = rel.rsplit("/", 1)[-1]
        if name in done:
            continue
        part = emb.index(rel)
        proba = predict(classifier, matrix(table.column("embedding"), emb.width))
        out = annotations_table(table.column("cell_id"), proba, classes, ann.threshold, _part_meta(emb, ann, part))
        lake.put_atomic(f"{stage}/{name}", parquet_bytes(out))
        counts.update(out.column("label").to_pylist())
        progress.advance(out.num_rows)
    rate = progress.finish()
    rows = sum(counts.values())
    info = {
        "rows": rows,
        "parts": len(emb.parts),
        "model": emb.model,
        "annotator": ann.name,
        "registered_model": ann.registered,
        "annotator_version": ann.version,
        "threshold": ann.threshold,
        "label_column": ann.label,
        "training_run_id": ann.run_id,
        "labels": dict(counts.most_common()),
        "unknown": counts.get(UNKNOWN, 0),
        "unknown_share": counts.get(UNKNOWN, 0) / rows if rows else 0.0,
        "cells_per_second": rate,
        "parts_resumed": len(done),
    }
    if replace and lake.is_published(final):
        lake.unpublish(final)
    if not lake.commit(stage, final, info, exist_ok=True):
        log.info("%s: annotations by %s were published by a concurrent run", emb.dataset_id, ann.describe())
        lake.rm(stage, recursive=True)
        return lake.commit_info(final)
    return info


def _labels_of(lake: Lake, rel: str) -> list[str]:
    import pyarrow.parquet as pq

    with lake.open(rel, "rb") as f:
        return pq.read_table(f, columns=["label"]).column("label").to_pylist()


def annotate_dataset(
    settings: Settings,
    dataset_id: str,
    model: str,
    *,
    annotators: list[str] | None = None,
    replace: bool = False,
    airflow: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Annotate ``dataset_id``'s ``model`` embeddings with each champion annotator for ``model``.

    Parameters
    ----------
    annotators
        Only these (each must have a champion for ``model``); default: every one registered.
    replace
        Re-annotate a dataset annotated by another version of an annotator (on request only:
        automatic runs leave it and log that a newer champion exists).

    Returns
    -------
    list of dict
        Per annotator: ``annotator``, ``version``, ``outcome`` (``annotated``, ``already`` or
        ``stale``), ``rows``, ``unknown_share``, ``path`` and the MLflow run id.
    """
    from pipelines.metrics import step_metrics

    lake = Lake(settings)
    found = registry.champions(settings, model, annotators)
    if not found:
        log.info("no annotator registered for %s: dataset %s is not annotated", model, dataset_id)
        return []
    emb = embedding_parts(lake, dataset_id, model)
    results = []
    for ann in found:
        final = PATHS.annotations(model, ann.name, dataset_id)
        if lake.is_published(final):
            info = lake.commit_info(final)
            if int(info.get("annotator_version") or 0) == ann.version:
                results.append(_result(lake, final, ann, ALREADY, info))
                continue
            if not replace:
                log.warning(
                    "dataset %s was annotated by %s v%s; the champion is now v%d: "
                    "`sclake annotate apply %s --annotator %s` re-annotates it",
                    dataset_id, ann.registered, info.get("annotator_version"), ann.version, dataset_id, ann.name,
                )  # fmt: skip
                results.append(_result(lake, final, ann, STALE, info))
                continue
        if emb.width != ann.width:
            raise AnnotationError(
                f"{ann.describe()} reads {ann.width}-wide {model} embeddings; "
                f"dataset {dataset_id}'s are {emb.width} wide",
                f"train the annotator again on a reference embedded with the current {model} files",
                code="width_mismatch",
            )
        started = time.time()
        with step_metrics(settings, "annotate", model=model) as m:
            info = write_annotations(settings, emb, ann, replace=replace)
            m.cells(info["rows"])
            m.annotated(ann.name, info["rows"] - info["unknown"], info["unknown"])
        from pipelines.annotate.lineage import log_annotation

        run_id = log_annotation(settings, emb, ann, info, started=started, airflow=airflow)
        results.append({**_result(lake, final, ann, ANNOTATED, info), "mlflow_run_id": run_id})
    return results


def _result(lake: Lake, final: str, ann: registry.Annotator, outcome: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "annotator": ann.name,
        "version": int(info.get("annotator_version") or ann.version),
        "champion_version": ann.version,
        "outcome": outcome,
        "rows": info.get("rows"),
        "unknown_share": round(float(info.get("unknown_share") or 0.0), 4),
        "path": lake.url(final),
    }
