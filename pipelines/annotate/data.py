"""A dataset's embeddings and labels as an annotator reads them: published parts, streamed one at a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines import formats
from pipelines.errors import InputError
from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import pyarrow as pa

log = get_logger(__name__)

_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")


class AnnotationError(InputError):
    """A reference, label column, annotator or dataset that cannot be used as asked."""

    def __init__(self, reason: str, hint: str = "", *, code: str = "annotation") -> None:
        super().__init__(reason, hint, code=code)


@dataclass(frozen=True)
class EmbeddingParts:
    """The published embeddings of one (dataset, model): part files, width, rows."""

    dataset_id: str
    model: str
    parts: tuple[str, ...]
    width: int
    rows: int
    columns: tuple[str, ...]  # the columns of the first part (cell_id, embedding, carried obs)

    def index(self, rel: str) -> int:
        """The part number of a part file (``part-00003.parquet`` -> 3)."""
        m = _PART_RE.search(rel)
        if m is None:
            raise ValueError(f"{rel!r} is not a part file")
        return int(m.group(1))


def embedded_models(lake: Lake, dataset_id: str) -> list[str]:
    """The models a dataset has published embeddings of."""
    out = []
    for rel in lake.ls(PATHS.embeddings_dir):
        model = rel.rstrip("/").rsplit("/", 1)[-1].removeprefix("model=")
        try:
            if lake.is_published(PATHS.embeddings(model, dataset_id)):
                out.append(model)
        except ValueError:
            continue
    return sorted(out)


def embedding_parts(lake: Lake, dataset_id: str, model: str) -> EmbeddingParts:
    """The published embeddings of ``dataset_id`` with ``model``.

    Raises
    ------
    AnnotationError
        Nothing published for that model (the message lists the models it was embedded with).
    """
    import pyarrow.parquet as pq

    final = PATHS.embeddings(model, dataset_id)
    if not lake.is_published(final):
        have = embedded_models(lake, dataset_id)
        raise AnnotationError(
            f"dataset {dataset_id} has no embeddings with model {model!r} "
            f"(it has embeddings with: {', '.join(have) if have else 'no model'})",
            f"embed it first (`sclake embed {dataset_id} --model {model}`), or pass the model it was embedded with",
            code="no_embeddings",
        )
    parts = tuple(sorted(p for p in lake.ls(final, suffix=".parquet") if _PART_RE.search(p)))
    if not parts:
        raise AnnotationError(f"the embeddings of dataset {dataset_id} with {model} hold no cells", code="empty")
    with lake.open(parts[0], "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    formats.check("embeddings", meta, lake.url(parts[0]))
    rows = int(lake.commit_info(final).get("rows") or 0)
    return EmbeddingParts(dataset_id, model, parts, int(meta["width"]), rows, tuple(schema.names))


def matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed-size-list column of embeddings as a ``(rows, width)`` float32 array."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, width)


def iter_parts(lake: Lake, emb: EmbeddingParts, columns: tuple[str, ...] = ()) -> Iterator[tuple[str, pa.Table]]:
    """``(part path, table)`` per part, with ``cell_id``, ``embedding`` and ``columns`` (one part in memory)."""
    import pyarrow.parquet as pq

    wanted = ["cell_id", "embedding", *(c for c in columns if c not in ("cell_id", "embedding"))]
    for rel in emb.parts:
        with lake.open(rel, "rb") as f:
            yield rel, pq.read_table(f, columns=wanted)


def read_labelled(lake: Lake, emb: EmbeddingParts, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings and labels of a reference, cells without a label (or a NaN embedding) left out.

    The label is read from the obs columns the embeddings carry, else from the dataset's obs
    table (``cells/dataset_id=<id>/obs.parquet``, written at ingestion from the Zarr's obs).

    Raises
    ------
    AnnotationError
        The column is in neither; the message lists the obs columns there are.
    """
    from pipelines.embed.writer import carried_name

    column = carried_name(label)
    lookup = None if column in emb.columns else _obs_labels(lake, emb, label)
    xs, ys = [], []
    for _, table in iter_parts(lake, emb, (column,) if lookup is None else ()):
        x = matrix(table.column("embedding"), emb.width)
        if lookup is None:
            y = np.asarray(table.column(column).cast("string").to_pylist(), dtype=object)
        else:
            y = np.asarray([lookup.get(c) for c in table.column("cell_id").to_pylist()], dtype=object)
        keep = np.asarray([v is not None and v == v and str(v) != "" for v in y]) & np.isfinite(x).all(axis=1)
        xs.append(x[keep])
        ys.append(y[keep].astype(str))
    x, y = np.concatenate(xs), np.concatenate(ys)
    dropped = emb.rows - len(y) if emb.rows else 0
    if dropped > 0:
        log.info("%s: %d cell(s) without a %r label or a finite embedding left out", emb.dataset_id, dropped, label)
    return x, y


def _obs_labels(lake: Lake, emb: EmbeddingParts, label: str) -> dict[str, str]:
    """``{cell_id: label}`` from the dataset's obs table; raises when it has no such column."""
    import pyarrow.parquet as pq

    rel = PATHS.cells_obs(emb.dataset_id)
    names: list[str] = []
    if lake.exists(rel):
        with lake.open(rel, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
    if label not in names:
        carried = [c for c in emb.columns if c not in ("cell_id", "embedding")]
        have = sorted(set(carried) | {n for n in names if n not in ("cell_id", "dataset_id")})
        raise AnnotationError(
            f"dataset {emb.dataset_id} has no obs column {label!r} (its obs columns: {', '.join(have) or 'none'})",
            "pass the column that holds the cell types with --label",
            code="no_label_column",
        )
    with lake.open(rel, "rb") as f:
        table = pq.read_table(f, columns=["cell_id", label])
    return dict(zip(table.column("cell_id").to_pylist(), table.column(label).cast("string").to_pylist(), strict=True))
