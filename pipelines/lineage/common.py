"""What the ingest and embedding runs share: result conversion, tags, validation, run lookup."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pipelines.lake import Lake
from pipelines.lineage import record, tracking

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


def dataset_facts(lake: Lake, dataset_id: str) -> tuple[dict[str, Any], Any]:
    """Zarr commit info and root attributes, and the MLflow schema of obs (from the first part)."""
    from pipelines.dataset import open_dataset

    ds = open_dataset(lake, dataset_id)
    attrs = {k: v for k, v in ds.attrs.items() if k != "parts"}
    attrs["n_parts"] = len(ds.parts)
    obs = ds.obs_part(0) if ds.parts else ds.obs
    return attrs, tracking.obs_schema(obs)


def validation_summary(lake: Lake, dataset_id: str, validation: Any, model: str | None = None) -> dict[str, Any]:
    """Validation summary: the given result, else ``validation.json`` from the lake."""
    data = as_dict(validation)
    if not data:
        files = record.validation_files(lake, dataset_id, model)
        if "validation.json" in files:
            data = json.loads(files["validation.json"])
    return data


def validation_tags(prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("outcome", "code", "ok", "summary")
    return {f"{prefix}.{k}": data[k] for k in keep if k in data and not isinstance(data[k], Mapping | list)}


def common_tags(kind: str, dataset_id: str, airflow: Mapping[str, Any] | None) -> dict[str, Any]:
    tags = {tracking.TAG_KIND: kind, tracking.TAG_DATASET: dataset_id}
    tags.update({f"airflow.{k}": v for k, v in record.airflow_ids(airflow).items()})
    if commit := record.code_commit():
        tags["sclake.code.git_commit"] = commit
    return tags


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finished_run(runs: list[Any]) -> Any:
    """The oldest finished run, or ``None``."""
    return next((run for run in runs if run.info.status == "FINISHED"), None)


def live_runs(runs: list[Any]) -> list[Any]:
    """Finished runs and runs still being logged (not those a killed process left behind), oldest first."""
    now = time.time() * 1000
    live = [
        r
        for r in runs
        if r.info.status == "FINISHED" or (r.info.status == "RUNNING" and now - r.info.start_time < STALE_RUN_MS)
    ]
    return sorted(live, key=lambda r: (r.info.start_time, r.info.run_id))


@contextlib.contextmanager
def failed_on_error(client: Any, run_id: str) -> Iterator[None]:
    """Mark the run FAILED when logging into it fails (the error propagates)."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
