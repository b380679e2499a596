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
