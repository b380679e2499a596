"""The outcomes of an upload, one vocabulary for the steps' manifests, the validation reports
and the DAGs (no heavy imports).

An upload's manifest goes ``ingested`` (or ``already``) → ``pass`` / ``pass_with_warnings``
(validated), or ``quarantined`` at either step. ``pass``, ``pass_with_warnings`` and ``fail``
are also what a validation report's ``outcome`` holds.
"""

from __future__ import annotations

from typing import Any

INGESTED = "ingested"  # converted now
ALREADY = "already"  # the same bytes were ingested before (same dataset id)
QUARANTINED = "quarantined"  # refused: moved to quarantine/<dataset_id>/ with reason.json
PASS = "pass"  # validated: every check passed
WARN = "pass_with_warnings"  # validated: only warning-severity checks failed
FAIL = "fail"  # a validation report's outcome when a critical check failed (the upload is quarantined)
VALIDATED = (PASS, WARN)  # the outcomes that go on to embedding


def refusal_message(manifest: dict[str, Any]) -> str:
    """One line for a refused upload: which, why (reason code), what to do, and where the reason is kept."""
    dataset_id = manifest.get("dataset_id")
    parts = [f"refused {manifest.get('key')}: [{manifest.get('code') or 'invalid_input'}] {manifest.get('reason')}"]
    if manifest.get("hint"):
        parts.append(f"what to do: {manifest['hint']}")
    if dataset_id:
        parts.append(f"kept in quarantine/{dataset_id}/ (see `sclake quarantine list`)")
    return "; ".join(parts)


# Manifest keys: when a step's work began and ended (epoch milliseconds), for lineage runs
# that span the work rather than their own logging.
STARTED_MS = "started_at_ms"
FINISHED_MS = "finished_at_ms"


def now_ms() -> int:
    import time

    return int(time.time() * 1000)
