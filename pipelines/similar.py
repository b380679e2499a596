"""Nearest cells by cosine distance over the ``embeddings`` view.

Two methods, and the result always says which one ran:

``exact``
    Every embedding of the model is compared with the query cell
    (``array_cosine_distance`` over ``DOUBLE[n]``, DuckDB streams the scan and keeps the
    top k), so the answer equals a brute-force computation.
``hnsw``
    The model's embeddings are copied into an in-memory table with an HNSW index from
    the ``vss`` extension (``metric = 'cosine'``) and the index answers the top-k query.
    Approximate, and the index build costs time, so ``auto`` picks it only for tables of
    at least :data:`HNSW_MIN_ROWS` cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.errors import InputError
from pipelines.logs import get_logger
from pipelines.query import connect, sql_str

if TYPE_CHECKING:
    import duckdb

    from pipelines.settings import Settings

log = get_logger(__name__)

HNSW_MIN_ROWS = 200_000
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
        ``"exact"``, ``"hnsw"``, or ``"auto"`` (HNSW when the model has ``hnsw_min_rows`` cells or more).
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
    con = con or connect(settings, materialize_cells=False)
    query_dataset, vector = _query_cell(con, model, cell_id, dataset_id)
    dim = len(vector)
    scope = f"model = {sql_str(model)}"
    if within_dataset:
        scope += f" AND dataset_id = {sql_str(query_dataset)}"
    searched = int(con.execute(f"SELECT count(*) FROM embeddings WHERE {scope}").fetchone()[0])
    method = index if index != "auto" else ("hnsw" if searched >= hnsw_min_rows else "exact")
    extra = ", ".join(_quote(c) for c in _extra_columns(con))
    shown = "cell_id, dataset_id" + (f", {extra}" if extra else "")
    if method == "exact":
        rows = con.execute(
            f"SELECT {shown}, array_cosine_distance(embedding::DOUBLE[{dim}], ?::DOUBLE[{dim}]) AS distance "
            f"FROM embeddings WHERE {scope} ORDER BY distance, dataset_id, cell_id LIMIT {int(k)}",
            [vector],
        )
    else:
        rows = _hnsw_search(con, scope, shown, vector, k)
    columns = [d[0] for d in rows.description]
    neighbors = [dict(zip(columns, r, strict=True)) for r in rows.fetchall()]
    log.info("similar: %s over %s cells of model %s", method, f"{searched:,}", model)
    return SimilarResult(model, cell_id, query_dataset, k, method, searched, neighbors)


def _hnsw_search(
    con: duckdb.DuckDBPyConnection, scope: str, shown: str, vector: list[float], k: int
) -> duckdb.DuckDBPyConnection:
    """Build an in-memory HNSW index over the scoped embeddings and answer the top-k query with it."""
    dim = len(vector)
    con.execute("DROP TABLE IF EXISTS similar_vectors")
    con.execute(
        f"CREATE TEMP TABLE similar_vectors AS SELECT {shown}, embedding::FLOAT[{dim}] AS embedding "
        f"FROM embeddings WHERE {scope}"
    )
    con.execute("CREATE INDEX similar_hnsw ON similar_vectors USING HNSW (embedding) WITH (metric = 'cosine')")
    con.execute(f"SET hnsw_ef_search = {max(64, 2 * int(k))}")
    sql = (
        f"SELECT {shown}, array_cosine_distance(embedding, ?::FLOAT[{dim}]) AS distance "
        f"FROM similar_vectors ORDER BY distance LIMIT {int(k)}"
    )
    plan = "\n".join(str(r[-1]) for r in con.execute("EXPLAIN " + sql, [vector]).fetchall())
    if "HNSW_INDEX_SCAN" not in plan:
        raise RuntimeError("DuckDB did not plan an HNSW index scan for the similarity query; use --index exact")
    return con.execute(sql, [vector])
