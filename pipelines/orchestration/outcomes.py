"""The outcomes of an upload, as the steps' manifests and the DAGs name them (no heavy imports)."""

from __future__ import annotations

from typing import Any

INGESTED = "ingested"  # converted now
ALREADY = "already"  # the same bytes were ingested before (same dataset id)
QUARANTINED = "quarantined"  # refused: moved to quarantine/<dataset_id>/ with reason.json
PASSED = "passed"  # validated
WARNED = "warned"  # validated, with warnings


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
