"""Ingest then validate one upload; quarantine it when it cannot be used.

A bad file never crashes the pipeline, never disappears and never reaches embedding:

* ingest refuses it (``InputError``: not HDF5, truncated, no raw counts, ...) → the upload
  goes to ``quarantine/<id>/`` with ingest's reason;
* validation fails → the ingested original (``raw/<id>.h5ad``) goes to quarantine with the
  validation's reason, and what ingest made of it (Zarr, obs Parquet) is removed;
* otherwise the dataset is validated (``pass`` or ``pass_with_warnings``) and its kept
  cells are recorded for the embedding step.

Afterwards every upload is in exactly one of ``raw/`` and ``quarantine/``, byte-identical.
Other errors (the object store unreachable, a missing model dictionary) propagate and
leave the upload where it is, so that a retry can succeed; :func:`process_uploads` records
them per file and goes on with the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import InputError, SclakeError
from pipelines.logs import get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

QUARANTINED, ERROR = "quarantined", "error"


@dataclass
class FlowResult:
    """What happened to one upload.

    Attributes
    ----------
    uri : str
        The upload as given.
    outcome : str
        ``"pass"``, ``"pass_with_warnings"``, ``"quarantined"`` or (from :func:`process_uploads`
        only) ``"error"``.
    dataset_id : str or None
    stage : str or None
        ``"ingest"`` or ``"validate"``: where a quarantined upload was refused.
    code, reason, hint : str or None
        Why it was quarantined (or the error), in plain words.
    validation : ValidationResult or None
    quarantine_path : str or None
        Lake path of the quarantined file.
    """

    uri: str
    outcome: str
    dataset_id: str | None = None
    stage: str | None = None
    code: str | None = None
    reason: str | None = None
    hint: str | None = None
    validation: Any = None
    quarantine_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in ("pass", "pass_with_warnings")

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no arrays)."""
        out = {
            "uri": self.uri,
            "outcome": self.outcome,
            "dataset_id": self.dataset_id,
            "stage": self.stage,
            "code": self.code,
            "reason": self.reason,
            "hint": self.hint,
            "warnings": list(self.warnings),
            "quarantine_path": self.quarantine_path,
        }
        if self.validation is not None:
            out["counts"] = {k: v for k, v in self.validation.counts.items() if k != "values"}
            out["report"] = self.validation.report
            out["data_docs"] = self.validation.data_docs
        return out

    def line(self) -> str:
        """One line for a terminal."""
        if self.outcome == QUARANTINED:
            return f"{self.uri}: quarantined as {self.dataset_id} [{self.code}] {self.reason}. {self.hint}"
        if self.outcome == ERROR:
            return f"{self.uri}: error: {self.reason}"
        extra = f" ({'; '.join(self.warnings)})" if self.warnings else ""
        return f"{self.uri}: {self.dataset_id} {self.outcome}{extra}"


def ingest_and_validate(settings: Settings, uri: str, *, model: str | None = None, client: Any = None) -> FlowResult:
    """Ingest ``uri`` and validate the dataset; quarantine it when either refuses it.

    Parameters
    ----------
    settings : Settings
    uri : str
        An upload: a key or URI under ``incoming/`` in the lake, or a local ``.h5ad``.
    model : str, optional
        The model whose vocabulary the genes are checked against (default: the first configured).
    client : distributed.Client, optional
        Dask client for ingest and validation (default: what each step uses on its own).

    Returns
    -------
    FlowResult
        ``outcome`` ``pass`` / ``pass_with_warnings``, or ``quarantined`` with code, reason and hint.

    Raises
    ------
    SclakeError
        Errors that are not about the file (lake unreachable, model dictionary missing);
        the upload stays where it was.
    """
    from pipelines.ingest import ingest
    from pipelines.quarantine import quarantine_dataset, quarantine_upload
    from pipelines.validate import validate_dataset

    try:
        ingested = ingest(settings, uri, client=client)
    except InputError as e:
        if e.code == "not_found":  # nothing there: nothing to quarantine
            raise
        entry = quarantine_upload(settings, uri, e)
        return FlowResult(
            uri=uri,
            outcome=QUARANTINED,
            dataset_id=entry.dataset_id,
            stage="ingest",
            code=entry.code,
            reason=entry.reason,
            hint=entry.hint,
            quarantine_path=entry.path,
        )
    dataset_id = ingested.dataset_id
    result = validate_dataset(settings, dataset_id, model=model, client=client)
    if not result.ok:
        entry = quarantine_dataset(settings, dataset_id, result, upload=uri)
        return FlowResult(
            uri=uri,
            outcome=QUARANTINED,
            dataset_id=dataset_id,
            stage="validate",
            code=result.code,
            reason=result.reason,
            hint=result.hint,
            validation=result,
            quarantine_path=entry.path,
        )
    return FlowResult(
        uri=uri, outcome=result.outcome, dataset_id=dataset_id, validation=result, warnings=list(result.warnings)
    )


def process_uploads(
    settings: Settings, uris: list[str], *, model: str | None = None, client: Any = None
) -> list[FlowResult]:
    """:func:`ingest_and_validate` each upload in turn; one file's error never stops the others.

    Any other error is recorded as outcome ``"error"`` (with its traceback in the log) and
    the upload is left in place for a retry.
    """
    results = []
    for uri in uris:
        try:
            results.append(ingest_and_validate(settings, uri, model=model, client=client))
        except Exception as e:  # noqa: BLE001 - a batch driver: one upload's failure must not stop the others
            log.error("%s: %s (left in place for a retry)", uri, e, exc_info=not isinstance(e, SclakeError))
            results.append(FlowResult(uri=uri, outcome=ERROR, code=type(e).__name__, reason=str(e)))
        log.info(results[-1].line())
    return results
