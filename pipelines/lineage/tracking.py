"""MLflow access for lineage: the tracking URI, the ``sclake`` experiment, finding and writing runs.

All runs live in one experiment, ``sclake``; tags say what a run is:

``sclake.kind``
    ``ingest`` (one per dataset) or ``embedding`` (one per dataset and model, nested under
    the dataset's ingest run through ``mlflow.parentRunId``).
``sclake.dataset_id`` / ``sclake.model``
    What the run is about; ``sclake lineage`` and idempotent logging search by them.

The MLflow client API is used throughout (no fluent, process-global active run), so
concurrent steps in one worker cannot log into each other's runs.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from pipelines.settings import Settings

log = get_logger(__name__)

EXPERIMENT = "sclake"
# MLflow 3 opens an experiment in the view its kind names; without it, the GenAI (traces) view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_KIND = "sclake.kind"
TAG_DATASET = "sclake.dataset_id"
TAG_MODEL = "sclake.model"
TAG_PARENT = "mlflow.parentRunId"
KIND_INGEST, KIND_EMBEDDING = "ingest", "embedding"
MAX_PARAM_CHARS = 6000


def tracking_uri(settings: Settings) -> str:
    """``settings.mlflow_tracking_uri``, else a SQLite store at ``$SCLAKE_HOME/mlflow/mlflow.db``.

    The local store is the one the embedded stack's MLflow server serves, so runs logged
    while the server is down show up once it is started.
    """
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{local_store_dir(settings) / 'mlflow.db'}"


def local_store_dir(settings: Settings) -> Path:
    return (settings.home / "mlflow").resolve()


def get_client(settings: Settings) -> MlflowClient:
    """An MLflow client for :func:`tracking_uri` (the local store's folder is created when needed)."""
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        local_store_dir(settings).mkdir(parents=True, exist_ok=True)
        (local_store_dir(settings) / "artifacts").mkdir(exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, settings: Settings) -> str:
    """Id of the ``sclake`` experiment, created when missing.

    With the local store, artifacts go to ``$SCLAKE_HOME/mlflow/artifacts`` (as the
    embedded server's ``--artifacts-destination``), never to the working directory.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older sclake
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if tracking_uri(settings).startswith("sqlite:///"):
        location = (local_store_dir(settings) / "artifacts").as_uri()
    tags = {"sclake": "lineage", EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location, tags=tags)
    except MlflowException:  # created by a concurrent step a moment ago
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def find_runs(client: MlflowClient, exp_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Active runs of the experiment whose tags equal ``tags``, oldest first."""
    filt = " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())
    return list(client.search_runs([exp_id], filter_string=filt, order_by=["attributes.start_time ASC"]))


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as MLflow stores them: strings (booleans lower-case), ``None`` values left out."""
    out = {}
    for key, value in tags.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[key] = text[:MAX_PARAM_CHARS]
    return out


def start_run(
    client: MlflowClient, exp_id: str, name: str, tags: Mapping[str, Any], start_time: int | None = None
) -> str:
    """Create a run and return its id (a REST tracking server takes string tags only).

    ``start_time`` (epoch milliseconds): when the step's work began, so that the run spans
    the work and not only its logging; default now.
    """
    return client.create_run(exp_id, start_time=start_time, run_name=name, tags=clean_tags(tags)).info.run_id


def flat_params(prefix: str, obj: Any) -> dict[str, str]:
    """Flatten nested dicts into ``prefix.key`` parameters (strings, cut to MLflow's length limit)."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flat_params(f"{prefix}.{key}" if prefix else str(key), value))
    elif obj is not None:
        text = obj if isinstance(obj, str) else json.dumps(obj, default=str, sort_keys=True)
        out[prefix] = text[:MAX_PARAM_CHARS]
    return out


def log_run_data(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float | int | None] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Log params, metrics (finite numbers only) and tags in batches."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    p = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in (params or {}).items() if v is not None]
    m = [
        Metric(k, float(v), now, 0)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    t = [RunTag(k, v) for k, v in clean_tags(tags or {}).items()]
    for i in range(0, max(len(p), len(m), len(t)), 100):
        client.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])


def obs_schema(obs: pd.DataFrame):
    """MLflow schema of an obs table: ``cell_id`` (the obs names) and one column per obs column."""
    from mlflow.types import ColSpec, DataType, Schema

    def kind(dtype: Any) -> DataType:
        if str(dtype) == "category":
            dtype = dtype.categories.dtype
        name = getattr(dtype, "kind", "O")
        return {
            "b": DataType.boolean,
            "i": DataType.long,
            "u": DataType.long,
            "f": DataType.double,
            "M": DataType.datetime,
        }.get(name, DataType.string)

    cols = [ColSpec(DataType.string, "cell_id")]
    cols += [ColSpec(kind(obs[c].dtype), str(c)) for c in obs.columns]
    return Schema(cols)


def log_dataset_input(
    client: MlflowClient, run_id: str, *, source_url: str, dataset_id: str, schema: Any, context: str
) -> None:
    """``log_input`` of the raw upload: source = its lake URL, digest = the dataset id, schema = its obs."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():
        # file:// URLs match MLflow's local source twice; both are the same class.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_url)
    dataset = MetaDataset(source, name=dataset_id, digest=dataset_id, schema=schema)
    entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
    client.log_inputs(run_id, datasets=[entity])


def log_artifacts(client: MlflowClient, run_id: str, files: Mapping[str, bytes]) -> None:
    """Log in-memory files as artifacts (``{"dir/name.ext": bytes}``)."""
    if not files:
        return
    with tempfile.TemporaryDirectory(prefix="sclake-artifacts-") as tmp:
        root = Path(tmp)
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for child in sorted(root.iterdir()):
            if child.is_dir():
                client.log_artifacts(run_id, str(child), artifact_path=child.name)
            else:
                client.log_artifact(run_id, str(child))
