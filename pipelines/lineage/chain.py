"""``sclake lineage DATASET_ID``: the chain upload key → raw file → Zarr → validation → embeddings → MLflow runs.

Everything is read from the lake (commit markers, Zarr attributes, validation summaries,
Parquet metadata and the lineage records the MLflow runs left there), so the chain shows
without MLflow running; the run ids point into MLflow for the rest.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake, check_dataset_id, lake_key
from pipelines.lineage import record, tracking

if TYPE_CHECKING:
    from pipelines.settings import Settings

CHAIN_ENCODING = {"encoding-type": "sclake.lineage-chain", "encoding-version": "1"}
_MODEL_DIR_RE = re.compile(r"^embeddings/model=([^/]+)$")
_RECORD_RE = re.compile(r"/lineage/model=([^/]+)\.json$")
UPLOAD_KEYS = ("upload_key", "source", "source_uri", "uri")


def upload_key(lake: Lake, value: Any) -> str | None:
    """An upload as recorded, in one form: the lake key relative to the lake root.

    Records hold uploads in the form their writer was given: a key (``incoming/x.h5ad``),
    the lake URL of that key (``s3://lake/incoming/x.h5ad``) or, on a ``file://`` lake, its
    absolute path. Each becomes ``incoming/x.h5ad``. An upload from outside the lake (a
    local file, an object in another bucket) keeps its path or URI.
    """
    if not value:
        return None
    text = str(value)
    if (rel := lake.key_of(text)) is not None:
        return rel
    if "://" in text or text.startswith("/"):  # another store, or a local path
        return text
    try:
        return lake_key(text)
    except LakeError:
        return text


def _zarr(lake: Lake, dataset_id: str) -> dict[str, Any]:
    rel = PATHS.zarr(dataset_id)
    out: dict[str, Any] = {"url": lake.url(rel), "published": lake.is_published(rel)}
    if not out["published"]:
        return out
    out["commit"] = lake.commit_info(rel)
    try:
        attrs = lake.read_json(f"{rel}/zarr.json").get("attributes", {})
    except (ValueError, OSError):
        attrs = {}
    keep = ("encoding-type", "encoding-version", "n_obs", "n_vars", "nnz", "counts_source", "gene_id_source")
    out.update({k: attrs[k] for k in keep if k in attrs})
    if "parts" in attrs:
        out["parts"] = len(attrs["parts"])
    if "source_sha256" in attrs:
        out["source_sha256"] = attrs["source_sha256"]
    return out


def _validation(lake: Lake, dataset_id: str, model: str | None = None) -> dict[str, Any] | None:
    rel = PATHS.validation(dataset_id, model)
    info = record.published(lake, rel)
    if info is None:
        return None
    out: dict[str, Any] = {"url": lake.url(rel), "outcome": info.get("outcome")}
    summary_rel = f"{rel}/validation.json"
    if lake.exists(summary_rel):
        summary = lake.read_json(summary_rel)
        flat = {**(summary.get("counts") or {}), **summary}
        for key in ("outcome", "code", "reason", "warnings", "n_cells", "n_kept", "n_dropped", "n_rows"):
            if key in flat and flat[key] not in (None, [], {}) and not isinstance(flat[key], dict):
                out[key] = flat[key]
    return out


def _models(lake: Lake, dataset_id: str) -> list[str]:
    models = set()
    for rel in lake.ls(PATHS.embeddings_dir):
        m = _MODEL_DIR_RE.match(rel)
        if m and lake.exists(f"{rel}/dataset_id={dataset_id}"):
            models.add(m.group(1))
    for rel in lake.ls(f"{PATHS.reports(dataset_id)}/lineage", suffix=".json"):
        m = _RECORD_RE.search(rel)
        if m:
            models.add(m.group(1))
    return sorted(models)


def _embedding(lake: Lake, dataset_id: str, model: str) -> dict[str, Any]:
    prefix = PATHS.embeddings(model, dataset_id)
    out: dict[str, Any] = {"model": model, "url": lake.url(prefix), "published": lake.is_published(prefix)}
    if out["published"]:
        manifest = record.embeddings_manifest(lake, model, dataset_id, checksums="none")
        out.update(
            rows=manifest["rows"],
            parts=len(manifest["parts"]),
            width=manifest["width"],
            commit=manifest["commit"],
            parquet_metadata=manifest["parquet_metadata"],
        )
    out["validation"] = _validation(lake, dataset_id, model)
    qc = PATHS.qc_plot(dataset_id, model)
    out["qc_plot"] = lake.url(qc) if lake.exists(qc) else None
    rec = record.read_record(lake, dataset_id, model) or {}
    out["mlflow_run_id"] = rec.get("run_id")
    out["mlflow_parent_run_id"] = rec.get("parent_run_id")
    out["output_fingerprint"] = rec.get("output_fingerprint")
    out["tracking_uri"] = rec.get("tracking_uri")
    from pipelines.annotate.lineage import annotation_lineage

    out["annotations"] = annotation_lineage(lake, dataset_id, model)
    return out


def dataset_lineage(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """The lineage chain of one dataset as a JSON-able dict (see ``docs/lineage.md`` for the fields).

    Raises
    ------
    ValueError
        When ``dataset_id`` is not 16 hex digits.
    """
    check_dataset_id(dataset_id)
    lake = Lake(settings)
    ingest = record.read_record(lake, dataset_id) or {}
    raw_rel = PATHS.raw(dataset_id)
    raw: dict[str, Any] = {"url": lake.url(raw_rel), "exists": lake.exists(raw_rel)}
    if raw["exists"]:
        raw["bytes"] = lake.size(raw_rel)
    zarr = _zarr(lake, dataset_id)
    upload = ingest.get("upload_key")
    for key in UPLOAD_KEYS:
        upload = upload or (zarr.get("commit") or {}).get(key)
    quarantine = None
    reason_rel = f"{PATHS.quarantine(dataset_id)}/reason.json"
    if lake.exists(reason_rel):
        reason = lake.read_json(reason_rel)
        quarantine = {"url": lake.url(PATHS.quarantine(dataset_id)), **reason}
        quarantine["source"] = upload_key(lake, reason.get("source"))
        upload = upload or reason.get("source")
    upload = upload_key(lake, upload)
    embeddings = [_embedding(lake, dataset_id, m) for m in _models(lake, dataset_id)]
    if not (raw["exists"] or zarr["published"] or quarantine or embeddings or ingest):
        raise LakeError(
            f"dataset {dataset_id!r} is not in the lake {lake.uri!r} (no raw file, Zarr store, quarantine or "
            f'embeddings); `sclake query "SELECT DISTINCT dataset_id FROM cells"` lists the datasets'
        )
    return {
        **CHAIN_ENCODING,
        "dataset_id": dataset_id,
        "lake": lake.uri,
        "upload": {"key": upload},
        "raw": raw,
        "zarr": zarr,
        "validation": _validation(lake, dataset_id),
        "quarantine": quarantine,
        "embeddings": embeddings,
        "mlflow": {
            "tracking_uri": ingest.get("tracking_uri")
            or next((e["tracking_uri"] for e in embeddings if e.get("tracking_uri")), None),
            "experiment": ingest.get("experiment") or (tracking.EXPERIMENT if embeddings else None),
            "ingest_run_id": ingest.get("run_id"),
        },
    }


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def _n(count: Any, noun: str) -> str:
    if not isinstance(count, int):
        return f"{count} {noun}s"
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def render_lineage(chain: dict[str, Any]) -> str:
    """The chain as indented text for a terminal."""
    lines = [f"dataset {chain['dataset_id']}   lake {chain['lake']}"]

    def row(label: str, text: str, indent: int = 1) -> None:
        lines.append(f"{'  ' * indent}{label:<12}{text}")

    row("upload", chain["upload"]["key"] or "(not recorded)")
    raw = chain["raw"]
    row("raw", f"{raw['url']}  ({_size(raw['bytes'])})" if raw["exists"] else f"{raw['url']}  (absent)")
    z = chain["zarr"]
    if z["published"]:
        cells, genes, parts = _n(z.get("n_obs"), "cell"), _n(z.get("n_vars"), "gene"), _n(z.get("parts"), "part")
        shape = f"{cells} x {genes}, {parts}"
        row("zarr", f"{z['url']}  {shape}")
    else:
        row("zarr", f"{z['url']}  (not published)")
    v = chain["validation"]
    if v:
        kept = f", {_n(v['n_kept'], 'cell')} kept of {v['n_cells']:,}" if "n_kept" in v and "n_cells" in v else ""
        row("validation", f"{v.get('outcome')}{kept}  {v['url']}")
    else:
        row("validation", "(not validated)")
    if chain["quarantine"]:
        q = chain["quarantine"]
        row("quarantine", f"{q.get('code')}: {q.get('reason')}  {q['url']}")
    if not chain["embeddings"]:
        row("embeddings", "(none)")
    for e in chain["embeddings"]:
        lines.append(f"  embeddings  model {e['model']}")
        state = (
            f"{_n(e['rows'], 'row')} in {_n(e['parts'], 'part')}, width {e['width']}"
            if e["published"]
            else "not published"
        )
        row("parquet", f"{e['url']}  {state}", 3)
        meta = e.get("parquet_metadata") or {}
        versions = {k: meta[k] for k in meta if k in ("encoding-version", "model_version", "tokenizer_version")}
        if versions:
            row("format", ", ".join(f"{k} {v}" for k, v in versions.items()), 3)
        ev = e["validation"]
        row("validation", ev.get("outcome") if ev else "(not validated)", 3)
        row("qc plot", e["qc_plot"] or "(none)", 3)
        row("mlflow run", e["mlflow_run_id"] or "(not logged)", 3)
        for a in e.get("annotations") or []:
            unknown = f", {100 * float(a.get('unknown_share') or 0):.1f}% unknown"
            row("annotated", f"{a['annotator']} ({a['registered_model']} v{a['annotator_version']}): "
                f"{_n(a['rows'], 'cell')}{unknown}  {a['path']}", 3)  # fmt: skip
            row("", f"mlflow run {a.get('mlflow_run_id') or '(not logged)'}, "
                f"trained in run {a.get('training_run_id')}; qc plot {a.get('qc_plot') or '(none)'}", 3)  # fmt: skip
    m = chain["mlflow"]
    if m["ingest_run_id"]:
        row("mlflow", f"ingest run {m['ingest_run_id']} in experiment {m['experiment']!r} at {m['tracking_uri']}")
    else:
        row("mlflow", "(no runs logged)")
    return "\n".join(lines)
