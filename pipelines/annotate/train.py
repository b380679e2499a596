"""``sclake annotate train``: a cell-type classifier on a labelled reference's embeddings.

The reference is a dataset in the lake, embedded with the model the annotator will read.
A stratified share of its cells is held out; the classifier (standardisation, then a
multinomial logistic regression, or k nearest neighbours) is fitted on the rest and scored
on the held-out cells (accuracy, macro-F1, per-class F1, confusion matrix), and that very
classifier is registered (see :mod:`pipelines.annotate.registry`): the scores describe
the model that annotates.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.annotate import registry
from pipelines.annotate.data import AnnotationError, embedding_parts, read_labelled
from pipelines.lake import Lake, check_dataset_id, check_model_name
from pipelines.lake_layout import check_annotator_name
from pipelines.lineage import tracking
from pipelines.logs import get_logger
from pipelines.settings import Settings

log = get_logger(__name__)

METHODS = ("logreg", "knn")
KIND_TRAINING = "annotator-training"
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]+")


@dataclass(frozen=True)
class TrainOptions:
    """What ``sclake annotate train`` takes (see the CLI's help for each)."""

    reference: str
    label: str
    model: str
    name: str | None = None  # default: the label column
    method: str = "logreg"
    holdout: float = 0.2
    threshold: float = 0.5
    min_cells_per_class: int = 10
    drop_rare: bool = False
    max_cells: int = 200_000
    neighbors: int = 15
    seed: int = 0

    def checked(self) -> TrainOptions:
        check_dataset_id(self.reference)
        check_model_name(self.model)
        check_annotator_name(self.name or self.label)
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.05 <= self.holdout <= 0.5:
            raise ValueError(f"holdout {self.holdout!r} must be between 0.05 and 0.5")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold {self.threshold!r} must be in [0, 1)")
        if self.min_cells_per_class < 2:
            raise ValueError(f"min cells per class {self.min_cells_per_class!r} must be at least 2")
        return self


def build_classifier(method: str, *, neighbors: int = 15, seed: int = 0) -> Any:
    """A scikit-learn pipeline: standardisation, then a logistic regression or kNN (cosine)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "logreg":
        clf: Any = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    elif method == "knn":
        clf = KNeighborsClassifier(n_neighbors=neighbors, weights="distance", metric="cosine", algorithm="brute")
    else:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return Pipeline([("scale", StandardScaler()), ("classify", clf)])


def check_classes(y: np.ndarray, opts: TrainOptions) -> np.ndarray:
    """The cells to train on: every class needs ``min_cells_per_class`` cells (or is dropped with
    ``drop_rare``), and at least two classes must remain. Returns a boolean mask."""
    classes, counts = np.unique(y, return_counts=True)
    ref = f"reference {opts.reference}"
    if len(classes) < 2:
        only = f"only {str(classes[0])!r}" if len(classes) else "none"
        raise AnnotationError(
            f"{ref} has one class in {opts.label!r} ({only}); a classifier needs at least two",
            "pick a reference (or a --label column) with several cell types",
            code="one_class",
        )
    rare = [(str(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < opts.min_cells_per_class]
    if rare and not opts.drop_rare:
        shown = ", ".join(f"{c!r} ({n})" for c, n in rare[:5]) + (f" and {len(rare) - 5} more" if len(rare) > 5 else "")
        raise AnnotationError(
            f"{ref}: {len(rare)} class(es) of {opts.label!r} have fewer than {opts.min_cells_per_class} cells: {shown}",
            "train without them with --drop-rare, or lower --min-cells-per-class",
            code="rare_classes",
        )
    keep = ~np.isin(y, [c for c, _ in rare])
    if rare:
        log.warning("%s: %d rare class(es) left out: %s", ref, len(rare), ", ".join(c for c, _ in rare))
        if len(classes) - len(rare) < 2:
            raise AnnotationError(
                f"{ref}: fewer than two classes of {opts.label!r} have {opts.min_cells_per_class} cells or more",
                "lower --min-cells-per-class, or use a larger reference",
                code="rare_classes",
            )
    return keep


def evaluate(classifier: Any, x: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scores on held-out cells: accuracy, macro-F1, per-class F1, the confusion matrix, and the
    share of cells the threshold would call ``unknown`` (and the accuracy of the others)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    proba = classifier.predict_proba(x)
    classes = np.asarray(classifier.classes_).astype(str)
    pred = classes[proba.argmax(axis=1)]
    confident = proba.max(axis=1) >= threshold
    values, counts = np.unique(y, return_counts=True)
    per_class = f1_score(y, pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "f1": dict(zip(classes.tolist(), per_class.tolist(), strict=True)),
        "unknown_share": float(1.0 - confident.mean()),
        "accuracy_confident": float((pred[confident] == y[confident]).mean()) if confident.any() else None,
        "chance": float(counts.max() / counts.sum()),
        "majority_class": str(values[counts.argmax()]),
        "classes": classes.tolist(),
        "confusion": confusion_matrix(y, pred, labels=classes).tolist(),
    }


def confusion_png(scores: dict[str, Any], title: str) -> bytes:
    """The confusion matrix (rows: true class, normalised per row) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(scores["confusion"], dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    classes = scores["classes"]
    size = max(5.0, 0.45 * len(classes) + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (held-out cells)")
    if len(classes) <= 25:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _split(x: np.ndarray, y: np.ndarray, opts: TrainOptions) -> tuple[np.ndarray, ...]:
    """A stratified subsample of at most ``max_cells`` cells, split into train and held-out shares."""
    from sklearn.model_selection import train_test_split

    if len(y) > opts.max_cells:
        x, _, y, _ = train_test_split(x, y, train_size=opts.max_cells, stratify=y, random_state=opts.seed)
        log.info("training on a stratified sample of %d cells (--max-cells)", opts.max_cells)
    return tuple(train_test_split(x, y, test_size=opts.holdout, stratify=y, random_state=opts.seed))


def train_annotator(settings: Settings, opts: TrainOptions) -> dict[str, Any]:
    """Train, evaluate, log and register an annotator; returns the JSON summary the CLI prints.

    Raises
    ------
    AnnotationError
        No embeddings of the reference with ``opts.model``, embeddings of another width than
        the model's files, no such label column, one class, or classes with too few cells.
    """
    opts = opts.checked()
    name = opts.name or opts.label
    lake = Lake(settings)
    emb = embedding_parts(lake, opts.reference, opts.model)
    check_model_width(settings, opts.model, emb.width, f"reference {opts.reference}")
    x, y = read_labelled(lake, emb, opts.label)
    keep = check_classes(y, opts)
    x_train, x_test, y_train, y_test = _split(x[keep], y[keep], opts)
    log.info("annotator %r: %s on %d cells, %d held out", name, opts.method, len(y_train), len(y_test))
    started = time.perf_counter()
    classifier = build_classifier(opts.method, neighbors=opts.neighbors, seed=opts.seed).fit(x_train, y_train)
    train_seconds = time.perf_counter() - started
    scores = evaluate(classifier, x_test, y_test, opts.threshold)
    log.info(
        "annotator %r: held-out accuracy %.3f, macro-F1 %.3f (chance %.3f), %.1f%% below the threshold",
        name, scores["accuracy"], scores["macro_f1"], scores["chance"], 100 * scores["unknown_share"],
    )  # fmt: skip
    facts = {"n_train": len(y_train), "n_test": len(y_test), "width": emb.width, "train_seconds": train_seconds}
    version, run_id = _log_and_register(settings, opts, name, classifier, scores, facts)
    return {
        "annotator": name,
        "registered_model": version.registered,
        "version": version.version,
        "alias": registry.ALIAS,
        "model": opts.model,
        "width": emb.width,
        "reference": opts.reference,
        "label": opts.label,
        "method": opts.method,
        "classes": scores["classes"],
        "n_train": len(y_train),
        "n_test": len(y_test),
        "accuracy": round(scores["accuracy"], 4),
        "macro_f1": round(scores["macro_f1"], 4),
        "chance": round(scores["chance"], 4),
        "threshold": opts.threshold,
        "unknown_share": round(scores["unknown_share"], 4),
        "train_seconds": round(train_seconds, 2),
        "training_run_id": run_id,
    }


def check_model_width(settings: Settings, model: str, width: int, what: str) -> None:
    """Embeddings ``width`` wide must match the model's files, where they are on this machine."""
    from pipelines.models import model_status

    try:
        status = model_status(settings, model)
    except (ValueError, KeyError, OSError):
        return
    if status.present and status.width and status.width != width:
        raise AnnotationError(
            f"{what}: its {model} embeddings are {width} wide, but the model files of {model} here are "
            f"{status.width} wide (they changed since it was embedded)",
            f"embed it again with the current model files (`sclake embed ID --model {model}`)",
            code="width_mismatch",
        )


def _metric_key(text: str) -> str:
    return _METRIC_KEY.sub("_", text)[:200]


def _log_and_register(
    settings: Settings, opts: TrainOptions, name: str, classifier: Any, scores: dict[str, Any], facts: dict[str, Any]
) -> tuple[registry.Annotator, str]:
    """The training run in MLflow (parameters, scores, confusion matrix, classes) and the registered version."""
    client = tracking.get_client(settings)
    exp = tracking.experiment_id(client, settings)
    tags = {
        tracking.TAG_KIND: KIND_TRAINING,
        tracking.TAG_DATASET: opts.reference,
        tracking.TAG_MODEL: opts.model,
        "sclake.annotator": name,
    }
    run_id = tracking.start_run(client, exp, f"train annotator {name} on {opts.reference}", tags)
    with _failed_on_error(client, run_id):
        params = {**{k: v for k, v in asdict(opts).items() if k != "name"}, "annotator": name, **facts}
        params.pop("train_seconds")
        metrics = {k: scores[k] for k in ("accuracy", "macro_f1", "unknown_share", "chance", "accuracy_confident")}
        metrics.update({_metric_key(f"f1.{c}"): v for c, v in scores["f1"].items()})
        metrics.update(n_classes=len(scores["classes"]), train_seconds=facts["train_seconds"])
        tracking.log_run_data(client, run_id, params=params, metrics=metrics)
        title = f"annotator {name}: {opts.label} from {opts.model} embeddings of {opts.reference}"
        tracking.log_artifacts(
            client,
            run_id,
            {
                "confusion_matrix.png": confusion_png(scores, title),
                "classes.json": json.dumps(scores["classes"], indent=1).encode(),
                "evaluation.json": json.dumps(scores, indent=1).encode(),
            },
        )
        version_tags = {
            registry.T_MODEL: opts.model,
            registry.T_WIDTH: facts["width"],
            registry.T_LABEL: opts.label,
            registry.T_CLASSES: json.dumps(scores["classes"]),
            registry.T_THRESHOLD: opts.threshold,
            registry.T_METHOD: opts.method,
            registry.T_REFERENCE: opts.reference,
            "sclake.accuracy": round(scores["accuracy"], 4),
            "sclake.macro_f1": round(scores["macro_f1"], 4),
        }
        version = registry.register(client, run_id, name, classifier, version_tags)
        tracking.log_run_data(client, run_id, tags={"sclake.registered_version": version.version})
    client.set_terminated(run_id, "FINISHED")
    log.info("registered %s (alias %r), training run %s", version.describe(), registry.ALIAS, run_id)
    return version, run_id


def _failed_on_error(client: Any, run_id: str):
    from pipelines.lineage.common import failed_on_error

    return failed_on_error(client, run_id)
