"""The pipeline's steps as plain functions over small manifests (dicts of ids and URIs).

The one sequence of an upload::

    ingest_upload → validate_upload                       (UPLOAD_STEPS; per upload)
    embed → validate_embeddings → record_lineage → annotate   (EMBED_STEPS; per dataset and model)

Airflow tasks (every execution mode; the container modes through ``sclake step``),
``sclake run`` (:func:`pipelines.orchestration.flowrun.run_upload`) and the tests call these
and nothing else; each takes ``Settings`` and JSON-able arguments and returns a JSON-able
manifest, never arrays or data frames. A refused upload is not an error: its manifest says
``quarantined``, with the step that refused it (``stage``), ``code``, ``reason``, ``hint``
and ``quarantine_path``. Errors that are not about the file (the object store unreachable)
propagate, and the upload stays where it is for a retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger
from pipelines.outcomes import (
    ALREADY,
    FINISHED_MS,
    INGESTED,
    QUARANTINED,
    STARTED_MS,
    now_ms,
)
from pipelines.settings import Settings

log = get_logger(__name__)


def ingest_upload(settings: Settings, key: str, *, client: Any = None) -> dict[str, Any]:
    """Ingest one upload (a lake key under ``incoming/``, any URI, or a local file).

    Unusable files are quarantined here (no retry can fix them); transient errors (the
    object store unreachable) propagate so that the caller retries, and so does a file
    that does not exist (``InputError`` with code ``not_found``: nothing to quarantine).
    ``client``: a Dask client to convert with (default: the settings' cluster, or a local one).
    """
    from pipelines.errors import InputError
    from pipelines.ingest import ingest
    from pipelines.metrics import step_metrics
    from pipelines.quarantine import quarantine_upload

    started = now_ms()
    lake = Lake(settings)
    # A URI or a local file as given; otherwise a key relative to the lake (e.g. ``incoming/x.h5ad``).
    uri = key if "://" in key or Path(key).exists() else lake.url(key)
    with step_metrics(settings, "ingest") as m:
        try:
            result = ingest(settings, uri, client=client)
        except InputError as e:
            if e.code == "not_found":
                raise
            # reason.json names the upload as given: a lake key stays a key
            q = quarantine_upload(settings, key if uri == lake.url(key) else uri, e)
            m.upload(QUARANTINED)
            m.quarantine(e.code)
            log.warning("quarantined %s: %s", uri, e)
            return _refused(key, "ingest", q)
        if result.already:
            m.upload(ALREADY)
        else:
            m.upload(INGESTED)
            m.cells(result.n_obs)
    outcome = ALREADY if result.already else INGESTED
    return {"key": key, "dataset_id": result.dataset_id, "outcome": outcome, "n_obs": result.n_obs, STARTED_MS: started}


def _refused(key: str, stage: str, q: Any) -> dict[str, Any]:
    """The manifest of an upload quarantined at ``stage`` (``q``: its quarantine entry)."""
    return {
        "key": key,
        "dataset_id": q.dataset_id,
        "outcome": QUARANTINED,
        "stage": stage,
        "code": q.code,
        "reason": q.reason,
        "hint": q.hint,
        "quarantine_path": q.path,
    }


def validate_upload(
    settings: Settings, manifest: dict[str, Any], model: str | None = None, *, client: Any = None
) -> dict[str, Any]:
    """Validate an ingested dataset (unless it was already); quarantine it when it fails.

    A dataset is validated once: an upload whose dataset was validated meanwhile (the same
    bytes uploaded twice in one batch, say) comes back as ``already``, so that only one
    upload announces it. Callers run validations one at a time (the DAG's
    ``sclake_validate`` pool), which makes this check race-free. An upload recognised as
    ``already`` ingested is validated only when an earlier run stopped between ingestion and
    validation. Quarantined uploads pass through. A validated upload's outcome is the
    report's, ``pass`` or ``pass_with_warnings`` (``warnings`` lists them).
    """
    if manifest.get("outcome") not in (INGESTED, ALREADY):
        return manifest
    from pipelines.validate import is_validated

    if is_validated(Lake(settings), manifest["dataset_id"]):
        return {**manifest, "outcome": ALREADY}
    from pipelines.metrics import step_metrics
    from pipelines.quarantine import quarantine_dataset
    from pipelines.validate import validate_dataset

    model = model or settings.model_list[0]
    with step_metrics(settings, "validate", model=model) as m:
        result = validate_dataset(settings, manifest["dataset_id"], model=model, client=client)
        m.cells(manifest.get("n_obs") or 0)
        if not result.ok:
            q = quarantine_dataset(settings, manifest["dataset_id"], result, upload=manifest.get("key"))
            m.quarantine(result.code or "invalid_input")
    if not result.ok:
        log.warning("quarantined %s: %s", manifest.get("key"), result.summary_line())
        return {**manifest, **_refused(manifest.get("key") or "", "validate", q)}
    # The dataset's ingestion run in MLflow, with the upload key (embedding runs nest under it).
    from pipelines.lineage import log_ingest_run

    run_id = log_ingest_run(
        settings,
        manifest["dataset_id"],
        upload_key=manifest.get("key"),
        validation=result,
        started_ms=manifest.get(STARTED_MS),
    )
    return {
        **manifest,
        "outcome": result.outcome,
        "warnings": list(result.warnings),
        "n_kept": int(result.counts.get("n_kept") or 0),
        "validation": result.summary_line(),
        "mlflow_ingest_run_id": run_id,
    }


def process_upload(settings: Settings, key: str, *, model: str | None = None, client: Any = None) -> dict[str, Any]:
    """:data:`UPLOAD_STEPS` in order for one upload, in this process (``sclake run``, tests).

    Returns the last manifest: ``pass`` / ``pass_with_warnings`` / ``already``, or
    ``quarantined`` with the stage that refused it.
    """
    manifest = ingest_upload(settings, key, client=client)
    return validate_upload(settings, manifest, model=model, client=client)


def datasets_to_embed(settings: Settings, model: str, dataset_ids: list[str] | None = None) -> list[str]:
    """Datasets that need embeddings with ``model``: the given ones, else every validated dataset
    without published embeddings (so a manual run catches up on anything missed)."""
    from pipelines.validate import is_validated

    lake = Lake(settings)
    if dataset_ids is None:
        dataset_ids = sorted(
            p.split("/")[-1].removesuffix(".zarr") for p in lake.ls(PATHS.zarr_dir) if p.endswith(".zarr")
        )
    return [
        d
        for d in dict.fromkeys(dataset_ids)
        if lake.is_published(PATHS.zarr(d))
        and is_validated(lake, d)
        and not lake.is_published(PATHS.embeddings(model, d))
    ]


def embed(
    settings: Settings, dataset_id: str, model: str, device: str | None = None, precision: str | None = None
) -> dict[str, Any]:
    """Tokenise and embed one dataset with one model; idempotent (published output is kept)."""
    from pipelines.embed import embed_dataset
    from pipelines.metrics import step_metrics

    started = now_ms()
    with step_metrics(settings, "embed", model=model, device=device or "auto") as m:
        result = embed_dataset(settings, dataset_id, model, device=device, precision=precision)
        summary = result.summary()
        m.set_labels(device=summary.get("device"))
        m.cells(summary.get("rows_written", summary.get("rows", 0)))
    return {"dataset_id": dataset_id, "model": model, **summary, STARTED_MS: started, FINISHED_MS: now_ms()}


def validate_embeddings(settings: Settings, dataset_id: str, model: str) -> dict[str, Any]:
    """Run the embedding-output suite; raises when the output is wrong (it should never be)."""
    from pipelines.validate import validate_embeddings as check

    result = check(settings, dataset_id, model)
    return {"dataset_id": dataset_id, "model": model, "outcome": result.outcome}


def record_lineage(
    settings: Settings,
    dataset_id: str,
    model: str,
    embed_manifest: dict[str, Any] | None = None,
    upload_key: str | None = None,
) -> dict[str, Any]:
    """One MLflow run per (dataset, model), linked to the dataset's ingestion run."""
    from pipelines.lineage import record_dataset_lineage

    run_id = record_dataset_lineage(settings, dataset_id, model, embed_manifest=embed_manifest, upload_key=upload_key)
    return {"dataset_id": dataset_id, "model": model, "mlflow_run_id": run_id}


def annotate(settings: Settings, manifest: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Apply every champion annotator of the model to the embedded dataset (``manifest``: the
    ``embed`` step's, or any with ``dataset_id`` and ``model``). Nothing to do without annotators.

    A dataset annotated by an older champion is left as it is (``stale`` in the result);
    ``sclake annotate apply`` re-annotates on request.
    """
    from pipelines.annotate import annotate_dataset

    dataset_id, model = manifest["dataset_id"], model or manifest["model"]
    done = annotate_dataset(settings, dataset_id, model)
    return {"dataset_id": dataset_id, "model": model, "annotations": done}


UPLOAD_STEPS = ("ingest_upload", "validate_upload")
EMBED_STEPS = ("embed", "validate_embeddings", "record_lineage", "annotate")
STEPS = {
    "ingest_upload": ingest_upload,
    "validate_upload": validate_upload,
    "embed": embed,
    "validate_embeddings": validate_embeddings,
    "record_lineage": record_lineage,
    "annotate": annotate,
}
