"""Nearest cells by cosine distance over the ``embeddings`` view.

Two methods, and the result always says which one ran:

``exact``
    Every embedding of the model is compared with the query cell
    (``array_cosine_distance`` over ``DOUBLE[n]``, DuckDB streams the scan and keeps the
    top k), so the answer equals a brute-force computation.
``hnsw``
    An HNSW index from the ``vss`` extension (``metric = 'cosine'``) answers the top-k
    query. The index is built once over the model's embeddings and kept in a DuckDB file
    under ``$SCLAKE_HOME/vss/`` (named after the fingerprint of the partitions it covers,
    so new embeddings make a new one); later searches load it. Approximate, and the first
    build is slow (minutes for 10^4-10^5 cells on a small machine), so ``auto`` picks it
    only when an up-to-date index exists or the model has :data:`HNSW_MIN_ROWS` cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import InputError
from pipelines.lake import COMMIT_MARKER, PATHS, Lake
from pipelines.logs import get_logger
from pipelines.query import (
    committed_partitions,
    connect,
    duckdb_location,
    load_extension,
    offline_connection,
    prepare_connection,
    read_parquet_sql,
    sql_str,
)

if TYPE_CHECKING:
    import duckdb

    from pipelines.settings import Settings

log = get_logger(__name__)

HNSW_MIN_ROWS = 1_000_000
INDEX_DIR = "vss"
INDEX_CHOICES = ("auto", "exact", "hnsw")


@dataclass
class SimilarResult:
    """Neighbours of one cell, nearest first (the cell itself comes first, at distance ~0)."""

    model: str
    cell_id: str
    dataset_id: str
    k: int
    method: str  # "exact" | "hnsw"
    searched: int  # cells compared (all embeddings of the model in scope)
    neighbors: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """One line saying which method answered."""
        if self.method == "hnsw":
            how = f"approximate, HNSW index (vss, cosine) over {self.searched:,} cells"
        else:
            how = f"exact cosine distance over {self.searched:,} cells"
        return f"{self.k} nearest cells to {self.cell_id!r} (dataset {self.dataset_id}, model {self.model}): {how}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _query_cell(
    con: duckdb.DuckDBPyConnection, model: str, cell_id: str, dataset_id: str | None
) -> tuple[str, list[float]]:
    where = f"model = {sql_str(model)} AND cell_id = {sql_str(cell_id)}"
    if dataset_id is not None:
        where += f" AND dataset_id = {sql_str(dataset_id)}"
    rows = con.execute(f"SELECT dataset_id, embedding FROM embeddings WHERE {where}").fetchall()
    if not rows:
        models = [r[0] for r in con.execute("SELECT DISTINCT model FROM embeddings ORDER BY 1").fetchall()]
        if model not in models:
            raise InputError(
                f"model {model!r} has no embeddings in the lake",
                f"models with embeddings: {models or 'none'}; run `sclake embed DATASET_ID --model {model}` first",
                code="unknown_model",
            )
        scope = f" in dataset {dataset_id}" if dataset_id else ""
        raise InputError(
            f"cell {cell_id!r} has no {model} embedding{scope}",
            "cell ids are the h5ad obs_names; list some with "
            f"`sclake query \"SELECT dataset_id, cell_id FROM embeddings WHERE model = '{model}' LIMIT 10\"`",
            code="unknown_cell",
        )
    datasets = sorted({r[0] for r in rows})
    if len(datasets) > 1:
        raise InputError(
            f"cell id {cell_id!r} occurs in {len(datasets)} datasets: {datasets}",
            "name one with --dataset",
            code="ambiguous_cell",
        )
    return rows[0][0], list(rows[0][1])


def _extra_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Scalar obs columns of the embeddings view, shown beside each neighbour."""
    cols = con.execute("DESCRIBE embeddings").fetchall()
    skip = {"cell_id", "dataset_id", "model", "embedding"}
    return [name for name, typ, *_ in cols if name not in skip and not typ.endswith("]")]


def _with_predictions(con: duckdb.DuckDBPyConnection, model: str, neighbors: list[dict]) -> list[dict]:
    """Each neighbour with the label every annotator predicted for it (``predicted.<annotator>``)."""
    if not neighbors:
        return neighbors
    pairs = ", ".join(f"({sql_str(n['dataset_id'])}, {sql_str(n['cell_id'])})" for n in neighbors)
    rows = con.execute(
        f"SELECT dataset_id, cell_id, annotator, label FROM annotations WHERE model = {sql_str(model)} "
        f"AND (dataset_id, cell_id) IN ({pairs})"
    ).fetchall()
    annotators = sorted({r[2] for r in rows})
    found = {(d, c, a): label for d, c, a, label in rows}
    return [
        {**n, **{f"predicted.{a}": found.get((n["dataset_id"], n["cell_id"], a)) for a in annotators}}
        for n in neighbors
    ]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def find_similar(
    settings: Settings,
    model: str,
    cell_id: str,
    *,
    dataset_id: str | None = None,
    k: int = 10,
    index: str = "auto",
    within_dataset: bool = False,
    hnsw_min_rows: int = HNSW_MIN_ROWS,
    con: duckdb.DuckDBPyConnection | None = None,
) -> SimilarResult:
    """The ``k`` cells nearest to one cell by cosine distance of their ``model`` embeddings.

    Parameters
    ----------
    settings
        Where the lake is.
    model
        Model whose embeddings are compared.
    cell_id
        The query cell (an h5ad ``obs_name``).
    dataset_id
        The dataset holding the query cell; needed only when the id occurs in several.
    k
        Neighbours returned, the query cell included.
    index
        ``"exact"``, ``"hnsw"``, or ``"auto"``: HNSW when an up-to-date index exists or the model has
        ``hnsw_min_rows`` cells or more, else exact.
    within_dataset
        Search only the query cell's dataset (default: every dataset embedded with ``model``).
    con
        A connection from :func:`pipelines.query.connect` to reuse.

    Raises
    ------
    InputError
        Unknown model or cell, or a cell id found in several datasets without ``dataset_id``.
    """
    if index not in INDEX_CHOICES:
        raise ValueError(f"index {index!r} is not one of {list(INDEX_CHOICES)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    con = con or connect(settings)
    query_dataset, vector = _query_cell(con, model, cell_id, dataset_id)
    dim = len(vector)
    scope = f"model = {sql_str(model)}"
    if within_dataset:
        scope += f" AND dataset_id = {sql_str(query_dataset)}"
    searched = int(con.execute(f"SELECT count(*) FROM embeddings WHERE {scope}").fetchone()[0])
    scope_dataset = query_dataset if within_dataset else None
    method = index
    if index == "auto":
        indexed = searched >= hnsw_min_rows or index_path(settings, model, scope_dataset)[0].is_file()
        method = "hnsw" if indexed else "exact"
    if method == "exact":
        extra = ", ".join(_quote(c) for c in _extra_columns(con))
        shown = "cell_id, dataset_id" + (f", {extra}" if extra else "")
        cur = con.execute(
            f"SELECT {shown}, array_cosine_distance(embedding::DOUBLE[{dim}], ?::DOUBLE[{dim}]) AS distance "
            f"FROM embeddings WHERE {scope} ORDER BY distance, dataset_id, cell_id LIMIT {int(k)}",
            [vector],
        )
        columns, rows = [d[0] for d in cur.description], cur.fetchall()
    else:
        columns, rows, searched = _hnsw_search(settings, model, vector, k, query_dataset if within_dataset else None)
    neighbors = _with_predictions(con, model, [dict(zip(columns, r, strict=True)) for r in rows])
    log.info("similar: %s over %s cells of model %s", method, f"{searched:,}", model)
    return SimilarResult(model, cell_id, query_dataset, k, method, searched, neighbors)


def index_fingerprint(lake: Lake, model: str, dataset_id: str | None = None) -> tuple[str, list[str]]:
    """Identity of the embeddings an index covers (part paths and commit markers) and those parts' paths."""
    parts = {
        key: files
        for key, files in committed_partitions(lake).items()
        if key[0] == model and dataset_id in (None, key[1])
    }
    h = hashlib.sha256()
    for (m, d), files in sorted(parts.items()):
        h.update(json.dumps([m, d, files]).encode())
        h.update(lake.read_bytes(f"{PATHS.embeddings(m, d)}/{COMMIT_MARKER}"))
    return h.hexdigest()[:16], [f for files in parts.values() for f in files]


def index_path(settings: Settings, model: str, dataset_id: str | None = None) -> tuple[Path, list[str]]:
    """Where the index over the current embeddings of ``model`` (one dataset, or all) is or would be."""
    fp, files = index_fingerprint(Lake(settings), model, dataset_id)
    return settings.home / INDEX_DIR / f"{_index_stem(model, dataset_id)}{fp}.duckdb", files


def _index_stem(model: str, dataset_id: str | None) -> str:
    return f"{model}--{dataset_id or 'all'}--"


def hnsw_index(settings: Settings, model: str, dim: int, *, dataset_id: str | None = None) -> Path:
    """The persisted HNSW index over a model's embeddings (optionally one dataset's), built when missing or stale.

    Indexes live in ``$SCLAKE_HOME/vss/`` (a local cache, never in the lake), one DuckDB
    file per (model, scope), named after the fingerprint of the embeddings they cover, so
    new or replaced partitions make a new index and the stale one is removed.
    """
    lake = Lake(settings)
    path, files = index_path(settings, model, dataset_id)
    if path.is_file():
        return path
    folder, stem = path.parent, _index_stem(model, dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.building"
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    con = prepare_connection(offline_connection(str(tmp)), settings)
    try:
        con.execute("SET hnsw_enable_experimental_persistence = true")
        source = read_parquet_sql([duckdb_location(lake, f) for f in files])
        con.execute(
            f"CREATE TABLE vectors AS SELECT * EXCLUDE (embedding, model), embedding::FLOAT[{dim}] AS embedding "
            f"FROM ({source})"
        )
        con.execute("CREATE INDEX vectors_hnsw ON vectors USING HNSW (embedding) WITH (metric = 'cosine')")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, path)
    for old in folder.glob(f"{stem}*.duckdb"):
        if old != path:
            old.unlink(missing_ok=True)
    log.info("built the HNSW index of %s (%d parts) in %.1fs: %s", model, len(files), time.perf_counter() - t0, path)
    return path


def _hnsw_search(
    settings: Settings, model: str, vector: list[float], k: int, dataset_id: str | None
) -> tuple[list[str], list[tuple], int]:
    """Answer the top-k query with the persisted HNSW index; returns (columns, rows, cells indexed)."""
    dim = len(vector)
    path = hnsw_index(settings, model, dim, dataset_id=dataset_id)
    con = offline_connection(str(path), read_only=True)
    try:
        load_extension(con, "vss")
        con.execute(f"SET hnsw_ef_search = {max(64, 2 * int(k))}")
        names = [r[0] for r in con.execute("DESCRIBE vectors").fetchall()]
        cols = ["cell_id", "dataset_id"] + [c for c in names if c not in ("cell_id", "dataset_id", "embedding")]
        shown = ", ".join(_quote(c) for c in cols)
        sql = (
            f"SELECT {shown}, array_cosine_distance(embedding, ?::FLOAT[{dim}]) AS distance "
            f"FROM vectors ORDER BY distance LIMIT {int(k)}"
        )
        plan = "\n".join(str(r[-1]) for r in con.execute("EXPLAIN " + sql, [vector]).fetchall())
        if "HNSW_INDEX_SCAN" not in plan:
            raise RuntimeError(f"DuckDB did not plan an HNSW index scan over {str(path)!r}; use --index exact")
        cur = con.execute(sql, [vector])
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
        indexed = int(con.execute("SELECT count(*) FROM vectors").fetchone()[0])
    finally:
        con.close()
    return columns, rows, indexed
