"""The MLflow run of one (dataset, model) embedding, nested under the dataset's ingest run.

Found again by the fingerprint of the published Parquet (the SHA-256 of its parts' paths
and checksums), so logging the same output twice returns the same run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.errors import SclakeError
from pipelines.lake import PATHS, Lake, check_dataset_id, check_model_name
from pipelines.lineage import record, tracking
from pipelines.lineage.common import (
    as_dict,
    common_tags,
    dataset_facts,
    failed_on_error,
    finished_run,
    is_number,
    validation_summary,
    validation_tags,
)
from pipelines.lineage.ingest_run import find_ingest_run, log_ingest_run
from pipelines.logs import get_logger
from pipelines.outcomes import FINISHED_MS, STARTED_MS

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)


def model_facts(settings: Settings, model: str) -> dict[str, Any]:
    """Name, version folder, whether the weights are synthetic, and the SHA-256 of every model file."""
    from pipelines.errors import ConfigError
    from pipelines.models import model_files, read_manifest
    from pipelines.models.manifest import file_entries

    try:
        files = model_files(settings, model)
        manifest = read_manifest(files)
        entries = manifest["files"] if manifest else file_entries(files)
    except (ConfigError, OSError, KeyError) as e:
        return {"name": model, "files_error": str(e)}
    return {
        "name": model,
        "version": files.version,
        "synthetic": bool(manifest and manifest.get("synthetic")),
        "tiny": bool(manifest and manifest.get("tiny")),
        "weights_file": files.weights_file,  # the file from_pretrained loads (model.safetensors, ...)
        "manifest": "sclake" if manifest else "none (files as Helical publishes them)",
        "files": entries,
    }


def fingerprint(manifest: Mapping[str, Any]) -> str:
    """SHA-256 over the parts' paths and checksums: the identity of one published embedding output."""
    h = hashlib.sha256()
    for part in manifest["parts"]:
        h.update(f"{part['path']}\0{part.get('sha256', part['bytes'])}\n".encode())
    return h.hexdigest()


def _artifact_files(
    lake: Lake, dataset_id: str, model: str, output_checks: Any, manifest: dict[str, Any], facts: dict[str, Any]
) -> dict[str, bytes]:
    """The embedding run's artifacts besides the QC plot: both validations, the Parquet
    manifest and the model's file facts."""
    files = {f"validation/dataset/{k}": v for k, v in record.validation_files(lake, dataset_id).items()}
    output_files = record.validation_files(lake, dataset_id, model)
    files.update({f"validation/embeddings/{k}": v for k, v in output_files.items()})
    if output_checks and "validation/embeddings/validation.json" not in files:
        files["validation/embeddings/validation.json"] = json.dumps(output_checks, indent=2, default=str).encode()
    files["embeddings_manifest.json"] = json.dumps(manifest, indent=2, default=str).encode()
    files["model_files.json"] = json.dumps(facts, indent=2, default=str).encode()
    return files


def log_embedding_run(
    settings: Settings,
    dataset_id: str,
    model: str,
    embed_result: Any = None,
    *,
    validation: Any = None,
    parent_run_id: str | None = None,
    airflow: Mapping[str, Any] | None = None,
    qc_plot: bool = True,
) -> str:
    """The MLflow run of one (dataset, model) embedding, nested under the dataset's ingest run.

    Logs the input dataset (source ``raw/<id>.h5ad``, digest = the dataset id, schema of
    obs); the model (name, version, file checksums, synthetic or trained weights); the run's
    settings (profile, precision, device, token budget, tokenizer) and package versions;
    Airflow ids; metrics (cells, cells/s, tokens/s, stage durations, peak RSS and GPU
    memory); and as artifacts the validation results, the Parquet manifest and a QC plot.

    Parameters
    ----------
    embed_result
        What ``embed_dataset`` returned (an ``EmbedResult`` or its ``summary()`` dict); what
        it lacks is read from the published partition (commit info, Parquet metadata).
    validation
        The embedding-output validation; default: the lake's reports.
    parent_run_id
        The ingest run; default: the dataset's ingest run (logged now when there is none).
    qc_plot
        Draw and log the PCA plot (also written to ``reports/<id>/qc/<model>.png``).

    Returns
    -------
    str
        The MLflow run id (an existing one when this exact output was logged before).
    """
    from pipelines.qcplot import write_qc_plot

    check_dataset_id(dataset_id)
    check_model_name(model)
    lake = Lake(settings)
    manifest = record.embeddings_manifest(lake, model, dataset_id)
    print_ = fingerprint(manifest)
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {tracking.TAG_KIND: tracking.KIND_EMBEDDING, tracking.TAG_DATASET: dataset_id, tracking.TAG_MODEL: model}
    found = finished_run(tracking.find_runs(client, exp, {**tags, "sclake.output_fingerprint": print_}))
    if found is not None:
        _write_embedding_record(lake, settings, dataset_id, model, found.info.run_id, manifest, print_)
        return found.info.run_id
    parent_run_id = parent_run_id or find_ingest_run(settings, dataset_id) or log_ingest_run(settings, dataset_id)

    result = as_dict(embed_result)
    # When the step's work began and ended (epoch ms): the run spans the work, not its logging.
    started_ms, finished_ms = result.pop(STARTED_MS, None), result.pop(FINISHED_MS, None)
    facts = model_facts(settings, model)
    _, schema = dataset_facts(lake, dataset_id)
    dataset_checks = validation_summary(lake, dataset_id, None)
    output_checks = validation_summary(lake, dataset_id, validation, model)

    run_id = tracking.start_run(
        client,
        exp,
        f"embed {dataset_id} {model}",
        {
            **common_tags(tracking.KIND_EMBEDDING, dataset_id, airflow),
            tracking.TAG_MODEL: model,
            tracking.TAG_PARENT: parent_run_id,
            "sclake.output_fingerprint": print_,
            "sclake.model.synthetic": str(facts.get("synthetic", "unknown")).lower(),
            **validation_tags("validation", dataset_checks),
            **validation_tags("embedding_validation", output_checks),
        },
        start_time=started_ms,
    )
    with failed_on_error(client, run_id):
        params = embedding_params(settings, dataset_id, model, result, manifest, facts)
        params["embeddings"] = manifest["prefix"]
        params["raw"] = lake.url(PATHS.raw(dataset_id))
        params["zarr"] = lake.url(PATHS.zarr(dataset_id))
        metrics = embedding_metrics(result, manifest)
        tracking.log_run_data(client, run_id, params=params, metrics=metrics)
        tracking.log_dataset_input(
            client,
            run_id,
            source_url=lake.url(PATHS.raw(dataset_id)),
            dataset_id=dataset_id,
            schema=schema,
            context="embedding",
        )
        files = _artifact_files(lake, dataset_id, model, output_checks, manifest, facts)
        if qc_plot:
            plot = write_qc_plot(settings, dataset_id, model, lake=lake, synthetic=bool(facts.get("synthetic")))
            files[f"qc/{model}.png"] = plot.png
            tracking.log_run_data(client, run_id, params={"qc.color_by": plot.color_by, "qc.path": lake.url(plot.path)})
        tracking.log_artifacts(client, run_id, files)
    client.set_terminated(run_id, "FINISHED", end_time=finished_ms)
    _write_embedding_record(lake, settings, dataset_id, model, run_id, manifest, print_, parent_run_id)
    log.info("MLflow embedding run %s for dataset %s, model %s", run_id, dataset_id, model)
    return run_id


RESULT_PARAMS = ("device", "precision", "attention", "token_budget", "emb_layer", "vocab_hash", "workers", "reused")


RESULT_METRICS = {
    "cells_per_second": "cells_per_s",
    "tokens_per_second": "tokens_per_s",
    "tokens": "tokens",
    "padded_tokens": "padded_tokens",
    "duration_seconds": "seconds",
    "peak_rss_bytes": "peak_rss_bytes",
    "gpu_peak_memory_bytes": "gpu_peak_memory_bytes",
    "parts_resumed": "parts_resumed",
}


def embedding_params(
    settings: Settings,
    dataset_id: str,
    model: str,
    result: Mapping[str, Any],
    manifest: Mapping[str, Any],
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    """Parameters of an embedding run: model and files, profile, how it ran, the output's format, versions.

    How it ran (device, precision, token budget, tokenizer) comes from the embed step's
    result, else from the commit marker the step wrote with the Parquet.
    """
    from pipelines.profiles import get_profile

    commit = manifest.get("commit") or {}
    merged = {**commit, **{k: v for k, v in result.items() if v is not None}}
    params: dict[str, Any] = {"dataset_id": dataset_id, "model_name": model}
    params.update({k: merged[k] for k in RESULT_PARAMS if k in merged})
    for key in ("tokenizer_version", "emb_mode", "model_version", "encoding-type", "encoding-version"):
        if key in commit:
            params[key] = commit[key]
    try:
        profile = get_profile(model)
    except SclakeError as e:
        params["profile"] = f"none ({e})"
    else:
        params["profile"] = profile.name
        params.update(tracking.flat_params("profile", profile.model_dump(mode="json")))
    params.update(tracking.flat_params("model", {k: v for k, v in facts.items() if k != "files"}))
    params.update({f"model.files.{rel}.sha256": e.get("sha256") for rel, e in (facts.get("files") or {}).items()})
    params.update(tracking.flat_params("parquet", manifest.get("parquet_metadata") or {}))
    params.update(tracking.flat_params("versions", record.package_versions()))
    return params


def embedding_metrics(result: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, float]:
    """Metrics of an embedding run: output size always; speed, stage durations and memory when the step computed.

    A result with ``reused`` (the output was published before and nothing ran) adds no
    speed figures. GPU memory is 0 for a run on the CPU.
    """
    metrics: dict[str, float] = {
        "cells": manifest["rows"],
        "parts": len(manifest["parts"]),
        "width": manifest.get("width") or 0,
    }
    if not result or result.get("reused"):
        return metrics
    for name, key in RESULT_METRICS.items():
        if is_number(result.get(key)):
            metrics[name] = float(result[key])
    if "gpu_peak_memory_bytes" not in metrics and str(result.get("device", "")).startswith("cpu"):
        metrics["gpu_peak_memory_bytes"] = 0.0
    for stage, seconds in (result.get("stage_seconds") or {}).items():
        if is_number(seconds):
            metrics[f"stage_seconds.{stage}"] = float(seconds)
    return metrics


def _write_embedding_record(
    lake: Lake,
    settings: Settings,
    dataset_id: str,
    model: str,
    run_id: str,
    manifest: Mapping[str, Any],
    print_: str,
    parent_run_id: str | None = None,
) -> None:
    old = record.read_record(lake, dataset_id, model) or {}
    record.write_record(
        lake,
        dataset_id,
        model,
        {
            "kind": tracking.KIND_EMBEDDING,
            "dataset_id": dataset_id,
            "model": model,
            "run_id": run_id,
            "parent_run_id": parent_run_id or old.get("parent_run_id"),
            "output_fingerprint": print_,
            "rows": manifest["rows"],
            "parts": len(manifest["parts"]),
            "tracking_uri": tracking.tracking_uri(settings),
            "experiment": tracking.EXPERIMENT,
        },
    )


def record_dataset_lineage(
    settings: Settings,
    dataset_id: str,
    model: str,
    *,
    embed_manifest: Mapping[str, Any] | None = None,
    upload_key: str | None = None,
    airflow: Mapping[str, Any] | None = None,
) -> str:
    """Log (or find) the dataset's ingest run and the (dataset, model) embedding run under it.

    The entry point for pipeline steps, which pass small manifests: ``embed_manifest`` is
    the embed step's summary. Returns the embedding run id.
    """
    parent = log_ingest_run(settings, dataset_id, upload_key=upload_key, airflow=airflow)
    return log_embedding_run(settings, dataset_id, model, embed_manifest, parent_run_id=parent, airflow=airflow)
