"""``validate_embeddings``: the embedding-output suite over ``embeddings/model=<m>/dataset_id=<id>/``.

Each Parquet part is summarised on its own (one row per embedded cell: ``cell_id``,
``width``, ``n_nonfinite``) and the suite ``sclake.embeddings`` checks the concatenation:
one row per validated cell, no duplicates, every vector of the model's width, only finite
values. Results go to ``reports/<id>/embedding_validation/model=<m>/``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import LakeError, SclakeError
from pipelines.lake import PATHS, Lake, check_dataset_id
from pipelines.logs import get_logger
from pipelines.settings import Settings
from pipelines.validate.gx_runner import SuiteRunner
from pipelines.validate.outcome import FAIL, PASS, ValidationResult, decide
from pipelines.validate.report import publish, validated_cell_ids
from pipelines.validate.suites import EMBEDDING_SUITE

log = get_logger(__name__)

REASONS = {
    "embedding_row_count": "the embeddings do not hold exactly one row per validated cell",
    "embedding_duplicates": "some cells were embedded more than once",
    "embedding_cell_ids": "some rows are not validated cells of the dataset",
    "embedding_width": "some embeddings do not have the model's width",
    "embedding_non_finite": "some embeddings hold NaN or infinite values",
}


class EmbeddingCheckError(SclakeError):
    """Published embeddings break the output contract; ``result`` holds every check."""

    def __init__(self, message: str, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result


def summarise_parquet(url: str, storage_options: dict[str, Any], part: int) -> pd.DataFrame:
    """One row per embedding of one Parquet part: ``cell_id``, ``part``, ``width``, ``n_nonfinite``."""
    import fsspec
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb", **storage_options) as f:
        table = pq.read_table(f, columns=["cell_id", "embedding"])
    emb = table.column("embedding").combine_chunks()
    n = len(emb)
    if pa.types.is_fixed_size_list(emb.type):
        width = np.full(n, emb.type.list_size, dtype=np.int64)
        offsets = np.arange(n + 1, dtype=np.int64) * emb.type.list_size
    else:
        width = pc.list_value_length(emb).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(width)])
    values = pc.list_flatten(emb).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad = (~np.isfinite(values)).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(bad)])
    n_nonfinite = cum[offsets[1:]] - cum[offsets[:-1]]
    return pd.DataFrame(
        {
            "cell_id": pd.Series(table.column("cell_id").to_pylist(), dtype=object),
            "part": np.full(n, part, dtype=np.int32),
            "width": width,
            "n_nonfinite": n_nonfinite,
        }
    )


def model_width(settings: Settings, model: str) -> int:
    """The model's embedding width: ``hidden_size`` of its ``config.json`` (else the registry's)."""
    from pipelines.models import get_spec, model_files

    config = model_files(settings, model).config
    if config.is_file():
        return int(json.loads(config.read_text())["hidden_size"])
    return int(get_spec(model).hidden_size)


def validate_embeddings(
    settings: Settings, dataset_id: str, model: str, *, raise_on_fail: bool = True, client: Any = None
) -> ValidationResult:
    """Check the published embeddings of ``dataset_id`` made with ``model`` and publish the results.

    Raises
    ------
    LakeError
        The embeddings are not published, or the dataset was not validated.
    EmbeddingCheckError
        A check failed (with ``raise_on_fail``, the default).
    """
    started = time.perf_counter()
    check_dataset_id(dataset_id)
    lake = Lake(settings)
    prefix = PATHS.embeddings(model, dataset_id)
    if not lake.is_published(prefix):
        raise LakeError(f"embeddings {lake.url(prefix)!r} are not published; run `sclake embed {dataset_id}` first")
    files = lake.ls(prefix, suffix=".parquet")
    parts = [int(Path(f).stem.split("-")[-1]) for f in files]
    urls = [lake.url(f) for f in files]
    jobs = list(zip(urls, parts, strict=True))
    if client is not None:
        futures = [client.submit(summarise_parquet, u, lake.storage_options, p, pure=False) for u, p in jobs]
        frames = client.gather(futures)
    else:
        import dask

        tasks = [dask.delayed(summarise_parquet)(u, lake.storage_options, p) for u, p in jobs]
        frames = list(dask.compute(*tasks, scheduler="threads"))
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"cell_id": pd.Series(dtype=object), "part": [], "width": [], "n_nonfinite": []})
    )
    expected = validated_cell_ids(lake, dataset_id)
    table["validated"] = table["cell_id"].isin(set(expected.tolist()))
    width = model_width(settings, model)
    with tempfile.TemporaryDirectory(prefix="sclake-docs-") as tmp:
        runner = SuiteRunner(Path(tmp) / "docs")
        params = {"expected_rows": int(len(expected)), "width": width}
        checks = runner.run(EMBEDDING_SUITE, table, params, run_name=f"{dataset_id}-{model}")
        _, failed, _ = decide(checks)
        result = ValidationResult(
            dataset_id=dataset_id,
            model=model,
            outcome=FAIL if failed else PASS,
            failed_checks=failed,
            checks=checks,
            thresholds=params,
            counts={
                "rows": int(len(table)),
                "validated_cells": int(len(expected)),
                "width": width,
                "parts": len(files),
            },
        )
        if failed:
            result.code = failed[0]
            result.reason = REASONS.get(failed[0], f"check {failed[0]!r} failed")
            result.hint = "Embed the dataset again (`sclake embed`); report a bug if it persists."
        runner.build_docs()
        final = PATHS.validation(dataset_id, model)
        result.report = f"{final}/validation.json"
        result.data_docs = f"{final}/data_docs/index.html"
        result.duration_s = time.perf_counter() - started
        publish(lake, final, result.to_dict(), runner.results_json(), Path(tmp) / "docs")
    log.info("embedding outputs of %s/%s: %s (%d rows)", model, dataset_id, result.outcome, len(table))
    if result.outcome == FAIL and raise_on_fail:
        raise EmbeddingCheckError(
            f"embeddings of {dataset_id} with {model!r} fail {', '.join(failed)}: {result.reason}", result
        )
    return result
