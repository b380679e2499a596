"""The lake layout: every lake path built in one place, from (dataset_id, model, part).

Layout (relative to ``SCLAKE_LAKE_URI``)::

    incoming/                                   drop zone (any sub-folders)
    raw/<dataset_id>.h5ad                       accepted originals, immutable
    zarr/<dataset_id>.zarr                      the chunked dataset
    tokens/dataset_id=<id>/vocab=<hash>/part-<NNNNN>.parquet   rank-value tokens, shared by models of one vocabulary
    embeddings/model=<m>/dataset_id=<id>/part-<NNNNN>.parquet
    annotations/model=<m>/annotator=<name>/dataset_id=<id>/part-<NNNNN>.parquet   predicted cell types
    quarantine/<dataset_id>/                    rejected uploads + reason.json
    reports/<dataset_id>/                       validation results, Data Docs, QC plots, lineage records
    cells/dataset_id=<dataset_id>/obs.parquet   obs of every cell (for the DuckDB ``cells`` view)
    models/                                     mirrored model files
    _staging/<final path>                       work in progress, never read by consumers

The names are pure: nothing here touches storage (that is :class:`pipelines.lake.Lake`),
and every name is re-exported by :mod:`pipelines.lake`.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from pipelines.errors import LakeError

STAGING = "_staging"
DATASET_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def check_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it is 16 lowercase hex digits, else raise ``ValueError``."""
    if not DATASET_ID_RE.match(dataset_id or ""):
        raise ValueError(f"dataset id {dataset_id!r} is not 16 lowercase hex digits (the start of a SHA-256)")
    return dataset_id


def check_model_name(model: str) -> str:
    if not MODEL_NAME_RE.match(model or ""):
        raise ValueError(f"model name {model!r} may only hold letters, digits, '.', '_' and '-'")
    return model


def check_annotator_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name or "") or len(name) > 64:
        raise ValueError(
            f"annotator name {name!r} may only hold letters, digits, '.', '_' and '-' (at most 64 characters)"
        )
    return name


class LakeKeyError(LakeError, ValueError):
    """A lake key given by a user that cannot be used: empty, a URI, or outside its prefix."""


def lake_key(key: str, prefix: str = "") -> str:
    """A user-given lake key, normalised and confined to ``prefix``.

    The one place where keys that users type (``--to incoming/x.h5ad``, an upload key)
    become lake paths. Leading slashes are dropped (the lake root), empty and ``.``
    components removed and ``..`` resolved (``incoming/a/../b.h5ad`` is
    ``incoming/b.h5ad``). The result must lie strictly inside ``prefix`` (default: the
    lake root), so ``incoming/../raw/x.h5ad`` under ``incoming`` and
    ``incoming/../../x.h5ad`` anywhere are refused.

    Raises
    ------
    LakeKeyError
        The key is empty, a URI, holds a backslash or NUL, or resolves outside ``prefix``;
        the message names the key, what it resolves to and what is accepted.
    """
    prefix = prefix.strip("/")
    where = f"under {prefix}/" if prefix else "inside the lake"
    example = f"{prefix}/<name>.h5ad" if prefix else "incoming/<name>.h5ad"
    if not isinstance(key, str) or not key.strip("/ "):
        raise LakeKeyError(f"lake key {key!r} is empty; give a key {where}, e.g. {example}")
    if "://" in key:
        raise LakeKeyError(f"{key!r} is a URI, not a lake key; give a key {where}, e.g. {example}")
    if "\\" in key or "\0" in key:
        raise LakeKeyError(f"lake key {key!r} holds a backslash or NUL character; use '/' between folders")
    norm = posixpath.normpath(key.lstrip("/"))
    inside = norm.startswith(f"{prefix}/") if prefix else norm not in (".", "..") and not norm.startswith("../")
    if not inside:
        raise LakeKeyError(
            f"lake key {key!r} resolves to {norm!r}, which is not a key {where}; give a key like {example}"
        )
    return norm


def part_name(part: int) -> str:
    """``part-00042``: the zero-padded part file stem."""
    if part < 0:
        raise ValueError(f"part index {part!r} must be >= 0")
    return f"part-{part:05d}"


@dataclass(frozen=True)
class LakePaths:
    """Relative lake paths (posix, no scheme) built from (dataset_id, model, part)."""

    incoming: str = "incoming"
    raw_dir: str = "raw"
    zarr_dir: str = "zarr"
    embeddings_dir: str = "embeddings"
    annotations_dir: str = "annotations"
    quarantine_dir: str = "quarantine"
    reports_dir: str = "reports"
    models_dir: str = "models"
    cells_dir: str = "cells"
    tokens_dir: str = "tokens"
    state_dir: str = "_state"

    def raw(self, dataset_id: str) -> str:
        return f"{self.raw_dir}/{check_dataset_id(dataset_id)}.h5ad"

    def zarr(self, dataset_id: str) -> str:
        return f"{self.zarr_dir}/{check_dataset_id(dataset_id)}.zarr"

    def embeddings(self, model: str, dataset_id: str) -> str:
        return f"{self.embeddings_dir}/model={check_model_name(model)}/dataset_id={check_dataset_id(dataset_id)}"

    def embedding_part(self, model: str, dataset_id: str, part: int) -> str:
        return f"{self.embeddings(model, dataset_id)}/{part_name(part)}.parquet"

    def annotations(self, model: str, annotator: str, dataset_id: str) -> str:
        """Published folder of one annotator's predictions for a dataset's ``model`` embeddings."""
        return (
            f"{self.annotations_dir}/model={check_model_name(model)}/annotator={check_annotator_name(annotator)}"
            f"/dataset_id={check_dataset_id(dataset_id)}"
        )

    def annotation_part(self, model: str, annotator: str, dataset_id: str, part: int) -> str:
        return f"{self.annotations(model, annotator, dataset_id)}/{part_name(part)}.parquet"

    def annotation_qc_plot(self, dataset_id: str, model: str, annotator: str) -> str:
        """The QC plot coloured by an annotator's predicted labels."""
        name = check_annotator_name(annotator)
        return f"{self.reports(dataset_id)}/qc/{check_model_name(model)}/annotator={name}.png"

    def annotation_record(self, dataset_id: str, model: str, annotator: str) -> str:
        """The lineage record of one annotation (annotator version, MLflow runs)."""
        return (
            f"{self.reports(dataset_id)}/lineage/annotations/model={check_model_name(model)}"
            f"/annotator={check_annotator_name(annotator)}.json"
        )

    def quarantine(self, dataset_id: str) -> str:
        return f"{self.quarantine_dir}/{check_dataset_id(dataset_id)}"

    def reports(self, dataset_id: str) -> str:
        return f"{self.reports_dir}/{check_dataset_id(dataset_id)}"

    def lineage_record(self, dataset_id: str, model: str | None = None) -> str:
        """``reports/<id>/lineage/ingest.json``, or ``.../model=<m>.json`` for an embedding run."""
        name = "ingest" if model is None else f"model={check_model_name(model)}"
        return f"{self.reports(dataset_id)}/lineage/{name}.json"

    def qc_plot(self, dataset_id: str, model: str) -> str:
        return f"{self.reports(dataset_id)}/qc/{check_model_name(model)}.png"

    def validation(self, dataset_id: str, model: str | None = None) -> str:
        """Published folder of a validation: ``reports/<id>/validation`` (the dataset suites) or
        ``reports/<id>/embedding_validation/model=<m>`` (the embedding-output suite).

        Holds ``validation.json`` (the summary), ``gx_results.json``, ``data_docs/`` (GX Data Docs)
        and, for the dataset, ``validated_cells.parquet``.
        """
        if model is None:
            return f"{self.reports(dataset_id)}/validation"
        return f"{self.reports(dataset_id)}/embedding_validation/model={check_model_name(model)}"

    def validated_cells(self, dataset_id: str) -> str:
        """Per cell (part, row): its stats and whether it passed validation (``kept``)."""
        return f"{self.validation(dataset_id)}/validated_cells.parquet"

    def cells(self, dataset_id: str) -> str:
        """The published directory holding a dataset's ``obs.parquet``."""
        return f"{self.cells_dir}/dataset_id={check_dataset_id(dataset_id)}"

    def cells_obs(self, dataset_id: str) -> str:
        return f"{self.cells(dataset_id)}/obs.parquet"

    def tokens(self, dataset_id: str, vocab_hash: str) -> str:
        """Published folder of a dataset's tokens for one vocabulary (``Vocabulary.hash``)."""
        if not re.match(r"^[0-9a-f]{16}$", vocab_hash or ""):
            raise ValueError(f"vocabulary hash {vocab_hash!r} is not 16 lowercase hex digits")
        return f"{self.tokens_dir}/dataset_id={check_dataset_id(dataset_id)}/vocab={vocab_hash}"

    def token_part(self, dataset_id: str, vocab_hash: str, part: int) -> str:
        return f"{self.tokens(dataset_id, vocab_hash)}/{part_name(part)}.parquet"

    def state(self, name: str) -> str:
        return f"{self.state_dir}/{name}"

    def staging(self, final: str) -> str:
        return f"{STAGING}/{final.strip('/')}"


PATHS = LakePaths()
