"""Annotators in MLflow's Model Registry: ``sclake-annotator-<name>``, the alias ``champion``.

Each registered version is an MLflow sklearn model (a scikit-learn pipeline) logged by the
run that trained and evaluated it. Its tags say what it applies to: the embedding model and
width, the label column it predicts, its classes and its confidence threshold. The
``champion`` alias marks the version that new uploads are annotated with; moving the alias
(``sclake annotate train`` does, or ``mlflow``'s ``set_registered_model_alias``) replaces it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.lake import check_model_name
from pipelines.lake_layout import check_annotator_name
from pipelines.lineage import tracking
from pipelines.logs import get_logger

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.settings import Settings

log = get_logger(__name__)

PREFIX = "sclake-annotator-"
ALIAS = "champion"
TAG_KIND = "sclake.kind"
KIND = "annotator"
ARTIFACT = "annotator"
# Model version tags
T_MODEL, T_WIDTH, T_LABEL = "sclake.model", "sclake.width", "sclake.label"
T_CLASSES, T_THRESHOLD = "sclake.classes", "sclake.threshold"
T_METHOD, T_REFERENCE = "sclake.method", "sclake.reference"


def registered_name(name: str) -> str:
    """``sclake-annotator-<name>``, the annotator's name in the registry."""
    return PREFIX + check_annotator_name(name)


@dataclass(frozen=True)
class Annotator:
    """One registered version of an annotator, as its tags describe it."""

    name: str
    version: int
    model: str
    width: int
    label: str
    classes: tuple[str, ...]
    threshold: float
    method: str
    reference: str
    run_id: str | None
    source: str

    @property
    def registered(self) -> str:
        return registered_name(self.name)

    def describe(self) -> str:
        return f"{self.registered} v{self.version}"


def _annotator(name: str, mv: Any) -> Annotator:
    tags = mv.tags or {}
    return Annotator(
        name=name,
        version=int(mv.version),
        model=tags.get(T_MODEL, ""),
        width=int(tags.get(T_WIDTH) or 0),
        label=tags.get(T_LABEL, ""),
        classes=tuple(json.loads(tags.get(T_CLASSES) or "[]")),
        threshold=float(tags.get(T_THRESHOLD) or 0.0),
        method=tags.get(T_METHOD, ""),
        reference=tags.get(T_REFERENCE, ""),
        run_id=mv.run_id,
        source=mv.source,
    )


def register(
    client: MlflowClient, run_id: str, name: str, classifier: Any, tags: dict[str, Any], *, champion: bool = True
) -> Annotator:
    """Log ``classifier`` as the run's ``annotator`` artifact, register a new version and (by
    default) point the alias ``champion`` at it."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    reg = registered_name(name)
    with tempfile.TemporaryDirectory(prefix="sclake-annotator-") as tmp:
        local = Path(tmp) / ARTIFACT
        # Requirements named here: MLflow would otherwise infer them by importing the model in a subprocess.
        mlflow.sklearn.save_model(
            classifier, str(local), serialization_format="cloudpickle", pip_requirements=_requirements()
        )
        client.log_artifacts(run_id, str(local), artifact_path=ARTIFACT)
    try:
        client.create_registered_model(
            reg,
            tags={TAG_KIND: KIND, T_MODEL: tags[T_MODEL]},
            description=f"cell-type annotator {name!r}: {tags[T_LABEL]!r} from {tags[T_MODEL]} embeddings",
        )
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT}"
    mv = client.create_model_version(reg, source, run_id=run_id, tags=tracking.clean_tags(tags))
    if champion:
        client.set_registered_model_alias(reg, ALIAS, mv.version)
    return _annotator(name, client.get_model_version(reg, mv.version))


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "numpy", "scipy", "cloudpickle")]


def champion(client: MlflowClient, name: str) -> Annotator | None:
    """The ``champion`` version of annotator ``name``; ``None`` when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(registered_name(name), ALIAS)
    except MlflowException:
        return None
    return _annotator(name, mv)


def annotator_names(client: MlflowClient) -> list[str]:
    """Every annotator in the registry (``sclake-annotator-*``)."""
    found = client.search_registered_models(filter_string=f"name LIKE '{PREFIX}%'", max_results=1000)
    return sorted(m.name[len(PREFIX) :] for m in found if m.name.startswith(PREFIX))


def champions(settings: Settings, model: str, names: list[str] | None = None) -> list[Annotator]:
    """The champion of every annotator registered for ``model`` (or of those ``names``).

    Raises
    ------
    AnnotationError
        A name given that has no champion, or whose champion is for another model.
    """
    from pipelines.annotate.data import AnnotationError

    check_model_name(model)
    client = tracking.get_client(settings)
    out = []
    for name in names if names is not None else annotator_names(client):
        found = champion(client, name)
        if found is None:
            if names is not None:
                raise AnnotationError(
                    f"annotator {name!r} has no {ALIAS!r} version in MLflow's registry ({registered_name(name)})",
                    "train one with `sclake annotate train --name NAME ...`, or see `sclake annotate list`",
                    code="no_annotator",
                )
            continue
        if found.model != model:
            if names is not None:
                raise AnnotationError(
                    f"annotator {name!r} ({found.describe()}) reads {found.model} embeddings, not {model}",
                    f"pass --model {found.model}",
                    code="annotator_model",
                )
            continue
        out.append(found)
    return out


def load_classifier(settings: Settings, annotator: Annotator) -> Any:
    """The scikit-learn pipeline of a registered version (downloaded from the tracking server)."""
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    before = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # step logs show our own progress
    try:
        with tempfile.TemporaryDirectory(prefix="sclake-annotator-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=annotator.source, dst_path=tmp, tracking_uri=tracking.tracking_uri(settings)
            )
            return mlflow.sklearn.load_model(local)
    finally:
        if before is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = before


def list_annotators(settings: Settings) -> list[dict[str, Any]]:
    """Every annotator with its champion (or ``None``) and its number of versions, for ``sclake annotate list``."""
    client = tracking.get_client(settings)
    rows = []
    for name in annotator_names(client):
        best = champion(client, name)
        versions = client.search_model_versions(f"name = '{registered_name(name)}'")
        rows.append(
            {
                "annotator": name,
                "registered_model": registered_name(name),
                "champion_version": best.version if best else None,
                "versions": len(versions),
                "model": best.model if best else None,
                "label": best.label if best else None,
                "classes": len(best.classes) if best else None,
                "threshold": best.threshold if best else None,
                "method": best.method if best else None,
                "reference": best.reference if best else None,
            }
        )
    return rows
