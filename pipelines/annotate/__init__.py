"""Cell-type annotation from embeddings: annotators trained on a labelled reference in the lake,
registered in MLflow's Model Registry, and applied to every new dataset of their model.

- :func:`train_annotator` (``sclake annotate train``): train, evaluate and register.
- :func:`annotate_dataset` (after every embedding, and ``sclake annotate apply``): predict.
"""

from pipelines.annotate.apply import UNKNOWN, annotate_dataset
from pipelines.annotate.data import AnnotationError
from pipelines.annotate.registry import ALIAS, champions, list_annotators, registered_name
from pipelines.annotate.train import METHODS, TrainOptions, train_annotator

__all__ = [
    "ALIAS",
    "METHODS",
    "UNKNOWN",
    "AnnotationError",
    "TrainOptions",
    "annotate_dataset",
    "champions",
    "list_annotators",
    "registered_name",
    "train_annotator",
]
