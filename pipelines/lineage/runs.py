"""One MLflow run per dataset ingestion and one per (dataset, model) embedding, nested under it.

Both functions are idempotent: the ingest run of a dataset is found by its tags before a new
one is created, and an embedding run is found by the fingerprint of the published Parquet
(the SHA-256 of its part checksums), so a retried task or a re-run of the pipeline over the
same outputs returns the existing run id. Run ids are also written to the lake
(``reports/<id>/lineage/``) for ``sclake lineage``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pipelines.errors import SclakeError
from pipelines.lake import PATHS, Lake, check_dataset_id, check_model_name
from pipelines.lineage import record, tracking
from pipelines.logs import get_logger

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)

# A run still RUNNING after this long was left by a process that died (it is ignored).
STALE_RUN_MS = 6 * 3600 * 1000


def as_dict(obj: Any) -> dict[str, Any]:
    """A step result as a plain dict: a mapping, ``summary()``/``to_dict()``, or a dataclass."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    for method in ("to_dict", "summary"):
        fn = getattr(obj, method, None)
        if callable(fn):
            out = fn()
            if isinstance(out, Mapping):
                return dict(out)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}


def split_values(prefix: str, data: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers of a (nested) result become metrics, everything else params, keys prefixed."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            m, p = split_values(name, value)
            metrics.update(m)
            params.update(p)
        elif isinstance(value, bool) or value is None:
            if value is not None:
                params[name] = str(value).lower()
        elif isinstance(value, int | float):
            metrics[name] = float(value)
        else:
            params[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return metrics, params


def _dataset_facts(lake: Lake, dataset_id: str) -> tuple[dict[str, Any], Any]:
    """Zarr commit info and root attributes, and the MLflow schema of obs (from the first part)."""
    from pipelines.dataset import open_dataset

    ds = open_dataset(lake, dataset_id)
    attrs = {k: v for k, v in ds.attrs.items() if k != "parts"}
    attrs["n_parts"] = len(ds.parts)
    obs = ds.obs_part(0) if ds.parts else ds.obs
    return attrs, tracking.obs_schema(obs)


def _validation(lake: Lake, dataset_id: str, validation: Any, model: str | None = None) -> dict[str, Any]:
    """Validation summary: the given result, else ``validation.json`` from the lake."""
    data = as_dict(validation)
    if not data:
        files = record.validation_files(lake, dataset_id, model)
        if "validation.json" in files:
            data = json.loads(files["validation.json"])
    return data


def _validation_tags(prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("outcome", "code", "ok", "summary")
    return {f"{prefix}.{k}": data[k] for k in keep if k in data and not isinstance(data[k], Mapping | list)}


def _common_tags(kind: str, dataset_id: str, airflow: Mapping[str, Any] | None) -> dict[str, Any]:
    tags = {tracking.TAG_KIND: kind, tracking.TAG_DATASET: dataset_id}
    tags.update({f"airflow.{k}": v for k, v in record.airflow_ids(airflow).items()})
    if commit := record.code_commit():
        tags["sclake.code.git_commit"] = commit
    return tags


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
    live = _live_runs(tracking.find_runs(client, exp, tags))
    old = record.read_record(lake, dataset_id) or {}
    if live:
        existing = live[0]
        run_id = existing.info.run_id
        if existing.info.status == "RUNNING":  # being logged by a concurrent step right now
            return run_id
        if "validation.outcome" not in existing.data.tags:  # validated after the run was logged
            _log_validation(client, run_id, lake, dataset_id, _validation(lake, dataset_id, validation))
        upload_key = upload_key or old.get("upload_key") or existing.data.params.get("upload_key")
        if old.get("run_id") != run_id or old.get("upload_key") != upload_key:
            _write_ingest_record(lake, settings, dataset_id, run_id, upload_key)
        return run_id

    attrs, schema = _dataset_facts(lake, dataset_id)
    raw_rel = PATHS.raw(dataset_id)
    result = as_dict(ingest_result) if not isinstance(ingest_result, str) else {}
    skip = ("dataset_id", "already")  # "already": whether this call found the dataset ingested before
    metrics, params = split_values("ingest", {k: v for k, v in result.items() if k not in skip})
    run = client.create_run(
        exp, run_name=f"ingest {dataset_id}", tags=_common_tags(tracking.KIND_INGEST, dataset_id, airflow)
    )
    run_id = run.info.run_id
    with _failed_on_error(client, run_id):
        params.update(
            {
                "dataset_id": dataset_id,
                "upload_key": upload_key,
                "raw": lake.url(raw_rel),
                "zarr": lake.url(PATHS.zarr(dataset_id)),
                "lake_uri": settings.lake_uri,
            }
        )
        params.update(tracking.flat_params("zarr", {k: v for k, v in attrs.items() if not _is_number(v)}))
        params.update(tracking.flat_params("versions", record.package_versions()))
        metrics.update({f"zarr.{k}": v for k, v in attrs.items() if _is_number(v)})
        if lake.exists(raw_rel):
            metrics["raw.bytes"] = lake.size(raw_rel)
        tracking.log_run_data(client, run_id, params=params, metrics=metrics)
        tracking.log_dataset_input(
            client, run_id, source_url=lake.url(raw_rel), dataset_id=dataset_id, schema=schema, context="ingest"
        )
        _log_validation(client, run_id, lake, dataset_id, _validation(lake, dataset_id, validation))
    client.set_terminated(run_id, "FINISHED")
    # Two steps of one dataset (one per model) may have logged at the same time: the oldest run wins.
    winner = _live_runs(tracking.find_runs(client, exp, tags))[0].info.run_id
    if winner != run_id:
        client.delete_run(run_id)
        run_id = winner
    _write_ingest_record(lake, settings, dataset_id, run_id, upload_key)
    log.info("MLflow ingest run %s for dataset %s", run_id, dataset_id)
    return run_id


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finished_run(runs: list[Any]) -> Any:
    """The oldest finished run, or ``None``."""
    return next((run for run in runs if run.info.status == "FINISHED"), None)


def _live_runs(runs: list[Any]) -> list[Any]:
    """Finished runs and runs still being logged (not those a killed process left behind), oldest first."""
    now = time.time() * 1000
    live = [
        r
        for r in runs
        if r.info.status == "FINISHED" or (r.info.status == "RUNNING" and now - r.info.start_time < STALE_RUN_MS)
    ]
    return sorted(live, key=lambda r: (r.info.start_time, r.info.run_id))


@contextlib.contextmanager
def _failed_on_error(client: Any, run_id: str) -> Iterator[None]:
    """Mark the run FAILED when logging into it fails (the error propagates)."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


def _log_validation(client: Any, run_id: str, lake: Lake, dataset_id: str, checks: Mapping[str, Any]) -> None:
    """The dataset validation's outcome as tags and its files as ``validation/`` artifacts."""
    if not checks:
        return
    tracking.log_run_data(client, run_id, tags=_validation_tags("validation", checks))
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
        "manifest": "sclake" if manifest else "none (files as Helical publishes them)",
        "files": entries,
    }


def fingerprint(manifest: Mapping[str, Any]) -> str:
    """SHA-256 over the parts' paths and checksums: the identity of one published embedding output."""
    h = hashlib.sha256()
    for part in manifest["parts"]:
        h.update(f"{part['path']}\0{part.get('sha256', part['bytes'])}\n".encode())
    return h.hexdigest()


def find_ingest_run(settings: Settings, dataset_id: str) -> str | None:
    """Run id of the dataset's ingest run: from the lake record, else by searching MLflow's tags."""
    rec = record.read_record(Lake(settings), dataset_id)
    if rec and rec.get("run_id") and rec.get("tracking_uri") == tracking.tracking_uri(settings):
        return rec["run_id"]
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {tracking.TAG_KIND: tracking.KIND_INGEST, tracking.TAG_DATASET: dataset_id}
    live = _live_runs(tracking.find_runs(client, exp, tags))
    return live[0].info.run_id if live else None


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
    found = _finished_run(tracking.find_runs(client, exp, {**tags, "sclake.output_fingerprint": print_}))
    if found is not None:
        _write_embedding_record(lake, settings, dataset_id, model, found.info.run_id, manifest, print_)
        return found.info.run_id
    parent_run_id = parent_run_id or find_ingest_run(settings, dataset_id) or log_ingest_run(settings, dataset_id)

    result = as_dict(embed_result)
    facts = model_facts(settings, model)
    _, schema = _dataset_facts(lake, dataset_id)
    dataset_checks = _validation(lake, dataset_id, None)
    output_checks = _validation(lake, dataset_id, validation, model)

    run = client.create_run(
        exp,
        run_name=f"embed {dataset_id} {model}",
        tags={
            **_common_tags(tracking.KIND_EMBEDDING, dataset_id, airflow),
            tracking.TAG_MODEL: model,
            tracking.TAG_PARENT: parent_run_id,
            "sclake.output_fingerprint": print_,
            "sclake.model.synthetic": str(facts.get("synthetic", "unknown")).lower(),
            **_validation_tags("validation", dataset_checks),
            **_validation_tags("embedding_validation", output_checks),
        },
    )
    run_id = run.info.run_id
    with _failed_on_error(client, run_id):
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
        files = {f"validation/dataset/{k}": v for k, v in record.validation_files(lake, dataset_id).items()}
        output_files = record.validation_files(lake, dataset_id, model)
        files.update({f"validation/embeddings/{k}": v for k, v in output_files.items()})
        if output_checks and "validation/embeddings/validation.json" not in files:
            files["validation/embeddings/validation.json"] = json.dumps(output_checks, indent=2, default=str).encode()
        files["embeddings_manifest.json"] = json.dumps(manifest, indent=2, default=str).encode()
        files["model_files.json"] = json.dumps(facts, indent=2, default=str).encode()
        if qc_plot:
            plot = write_qc_plot(settings, dataset_id, model, lake=lake)
            files[f"qc/{model}.png"] = plot.png
            tracking.log_run_data(client, run_id, params={"qc.color_by": plot.color_by, "qc.path": lake.url(plot.path)})
        tracking.log_artifacts(client, run_id, files)
    client.set_terminated(run_id, "FINISHED")
    _write_embedding_record(lake, settings, dataset_id, model, run_id, manifest, print_, parent_run_id)
    log.info("MLflow embedding run %s for dataset %s, model %s", run_id, dataset_id, model)
    return run_id


RESULT_PARAMS = ("device", "precision", "token_budget", "emb_layer", "vocab_hash", "workers", "reused")
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
        if _is_number(result.get(key)):
            metrics[name] = float(result[key])
    if "gpu_peak_memory_bytes" not in metrics and str(result.get("device", "")).startswith("cpu"):
        metrics["gpu_peak_memory_bytes"] = 0.0
    for stage, seconds in (result.get("stage_seconds") or {}).items():
        if _is_number(seconds):
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
