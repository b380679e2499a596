"""DuckDB over the lake: views ``embeddings``, ``cells`` and ``annotations``, offline extensions, an S3 secret.

``connect(settings)`` returns an in-memory DuckDB connection with three views:

``embeddings``
    Every committed embeddings partition
    (``embeddings/model=<m>/dataset_id=<id>/part-*.parquet``): ``cell_id``, ``embedding``
    (``FLOAT[]``), the obs columns carried through, and the hive columns ``model`` and
    ``dataset_id``. A partition is read only once its ``_SUCCESS`` marker exists, so a
    query never sees half of an embedding run.
``cells``
    The obs table of every dataset (``cells/dataset_id=<id>/obs.parquet``): ``cell_id``,
    the obs columns and ``dataset_id``, published by ingestion. Queries never write to the lake.
``annotations``
    Every committed annotation
    (``annotations/model=<m>/annotator=<name>/dataset_id=<id>/part-*.parquet``): ``cell_id``,
    ``label`` (``unknown`` below the annotator's threshold), ``probability``, ``best_label``
    and the hive columns ``model``, ``annotator`` and ``dataset_id``. Join it with
    ``embeddings`` or ``cells`` on ``(dataset_id, cell_id)``.

Extensions come from the PyPI packages ``duckdb-extension-httpfs`` and
``duckdb-extension-vss`` and are loaded from their files; automatic installation and
loading are switched off, so DuckDB never reaches the network for an extension.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from pipelines.errors import ConfigError, SclakeError
from pipelines.ingest.cells import committed_cells
from pipelines.lake import COMMIT_MARKER, PATHS, Lake
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import duckdb

    from pipelines.settings import Settings

log = get_logger(__name__)


class QueryError(SclakeError):
    """A query DuckDB rejected (syntax, unknown column, type error)."""


EMBEDDING_HIVE_TYPES = "{'model': 'VARCHAR', 'dataset_id': 'VARCHAR'}"
CELLS_HIVE_TYPES = "{'dataset_id': 'VARCHAR'}"
ANNOTATIONS_HIVE_TYPES = "{'model': 'VARCHAR', 'annotator': 'VARCHAR', 'dataset_id': 'VARCHAR'}"
EMPTY_ANNOTATIONS = (
    "SELECT NULL::VARCHAR AS cell_id, NULL::VARCHAR AS label, NULL::FLOAT AS probability, "
    "NULL::VARCHAR AS best_label, NULL::VARCHAR AS model, NULL::VARCHAR AS annotator, "
    "NULL::VARCHAR AS dataset_id WHERE false"
)
EMPTY_EMBEDDINGS = (
    "SELECT NULL::VARCHAR AS cell_id, NULL::FLOAT[] AS embedding, NULL::VARCHAR AS model, "
    "NULL::VARCHAR AS dataset_id WHERE false"
)
EMPTY_CELLS = "SELECT NULL::VARCHAR AS cell_id, NULL::VARCHAR AS dataset_id WHERE false"
_PARTITION_RE = re.compile(r"^embeddings/model=([^/]+)/dataset_id=([0-9a-f]{16})$")
_ANNOTATION_RE = re.compile(r"^annotations/model=([^/]+)/annotator=([^/]+)/dataset_id=([0-9a-f]{16})$")
_ZARR_RE = re.compile(r"^zarr/([0-9a-f]{16})\.zarr$")


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def extension_path(name: str) -> Path:
    """The ``<name>.duckdb_extension`` file shipped by the PyPI package ``duckdb-extension-<name>``.

    Raises
    ------
    ConfigError
        The package is not installed, or holds no extension built for this DuckDB.
    """
    import duckdb

    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"DuckDB extension {name!r} is not installed; install the PyPI package duckdb-extension-{name} "
            f"(a dependency of sclake: run `uv sync`)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    wanted = root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if wanted.is_file():
        return wanted
    found = sorted(p.parent.name for p in root.glob(f"*/{name}.duckdb_extension"))
    raise ConfigError(
        f"duckdb-extension-{name} holds builds for {found or 'no version'}, not for DuckDB v{duckdb.__version__}; "
        f"install the duckdb-extension-{name} release that matches duckdb=={duckdb.__version__}"
    )


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load an extension from its PyPI package's file (never from the network)."""
    con.execute(f"LOAD {sql_str(str(extension_path(name)))}")


def offline_connection(database: str = ":memory:", *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory by default) that never installs or auto-loads extensions."""
    import duckdb

    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    return duckdb.connect(database, read_only=read_only, config=config)


def prepare_connection(con: duckdb.DuckDBPyConnection, settings: Settings) -> duckdb.DuckDBPyConnection:
    """Load ``vss``, and for an ``s3://`` lake ``httpfs`` and a (temporary, never persisted) S3 secret."""
    if settings.is_s3:
        load_extension(con, "httpfs")
        con.execute(s3_secret_sql(settings))
    load_extension(con, "vss")
    return con


def s3_secret_sql(settings: Settings, name: str = "sclake_lake") -> str:
    """``CREATE SECRET`` for the lake's bucket: endpoint, path-style URLs, SSL from the endpoint's scheme."""
    bucket = settings.lake_uri[len("s3://") :].split("/", 1)[0]
    opts = ["TYPE s3", f"REGION {sql_str(settings.s3_region)}", f"SCOPE {sql_str('s3://' + bucket)}"]
    if settings.s3_access_key:
        opts += [f"KEY_ID {sql_str(settings.s3_access_key)}", f"SECRET {sql_str(settings.s3_secret_key or '')}"]
    if settings.s3_endpoint_url:
        url = urlsplit(settings.s3_endpoint_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"S3 endpoint {settings.s3_endpoint_url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:9000)"
            )
        opts += [
            f"ENDPOINT {sql_str(url.netloc)}",
            "URL_STYLE 'path'",
            f"USE_SSL {'true' if url.scheme == 'https' else 'false'}",
        ]
    return f"CREATE OR REPLACE SECRET {name} ({', '.join(opts)})"


def duckdb_location(lake: Lake, rel: str) -> str:
    """What DuckDB reads for a lake path: a local path on ``file://``, an ``s3://`` URL otherwise."""
    return lake.reader_location(rel)


def committed_partitions(
    lake: Lake, root: str = PATHS.embeddings_dir, pattern: re.Pattern[str] = _PARTITION_RE
) -> dict[tuple[str, ...], list[str]]:
    """``{(model, dataset_id): [part paths]}`` of the embeddings partitions that carry a commit marker
    (``root`` and ``pattern``: another hive-partitioned output, keyed by the pattern's groups)."""
    files = lake.ls(root, recursive=True)
    by_dir: dict[str, list[str]] = {}
    markers = set()
    for rel in files:
        parent, _, name = rel.rpartition("/")
        if name == COMMIT_MARKER:
            markers.add(parent)
        elif name.endswith(".parquet"):
            by_dir.setdefault(parent, []).append(rel)
    out = {}
    for parent, parts in sorted(by_dir.items()):
        m = pattern.match(parent)
        if m and parent in markers:
            out[m.groups()] = sorted(parts)
    return out


def zarr_datasets(lake: Lake, *, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Dataset ids that have a published Zarr store (those in ``skip`` are not checked)."""
    ids = []
    for rel in lake.ls(PATHS.zarr_dir):
        m = _ZARR_RE.match(rel)
        if m and m.group(1) not in skip and lake.is_published(rel):
            ids.append(m.group(1))
    return ids


def read_parquet_sql(locations: list[str], hive_types: str = EMBEDDING_HIVE_TYPES) -> str:
    """``SELECT * FROM read_parquet([...])`` over lake files, hive columns typed, columns unioned by name."""
    files = "[" + ", ".join(sql_str(p) for p in locations) + "]"
    opts = f"hive_partitioning = true, union_by_name = true, hive_types = {hive_types}"
    return f"SELECT * FROM read_parquet({files}, {opts})"


def create_views(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """(Re)create the ``embeddings``, ``cells`` and ``annotations`` views from what is committed now.

    Reads only: the obs Parquet behind ``cells`` is published by ingestion
    (:mod:`pipelines.ingest.cells`). Datasets ingested before it was are named in a warning.
    """
    lake = Lake(settings)
    parts = [duckdb_location(lake, p) for files in committed_partitions(lake).values() for p in files]
    embeddings = read_parquet_sql(parts, EMBEDDING_HIVE_TYPES) if parts else EMPTY_EMBEDDINGS
    con.execute(f"CREATE OR REPLACE VIEW embeddings AS {embeddings}")
    have = committed_cells(lake)
    done = {rel.split("/")[1].removeprefix("dataset_id=") for rel in have}
    missing = zarr_datasets(lake, skip=done)
    if missing:
        log.warning(
            "%d dataset(s) have no cells table and are missing from the view cells (%s): "
            "`sclake ingest raw/<dataset_id>.h5ad` writes it from the raw copy",
            len(missing),
            ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""),
        )
    files = [duckdb_location(lake, p) for p in have]
    cells = read_parquet_sql(files, CELLS_HIVE_TYPES) if files else EMPTY_CELLS
    con.execute(f"CREATE OR REPLACE VIEW cells AS {cells}")
    committed = committed_partitions(lake, PATHS.annotations_dir, _ANNOTATION_RE)
    files = [duckdb_location(lake, p) for parts in committed.values() for p in parts]
    annotations = read_parquet_sql(files, ANNOTATIONS_HIVE_TYPES) if files else EMPTY_ANNOTATIONS
    con.execute(f"CREATE OR REPLACE VIEW annotations AS {annotations}")


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``embeddings``, ``cells`` and ``annotations``.

    Parameters
    ----------
    settings
        Lake URI, S3 endpoint and credentials.

    Returns
    -------
    duckdb.DuckDBPyConnection
        With ``httpfs`` loaded and an S3 secret for an ``s3://`` lake, and ``vss`` loaded.
        Opening it writes nothing to the lake.
    """
    con = prepare_connection(offline_connection(), settings)
    create_views(con, settings)
    return con


FORMATS = ("table", "csv", "json")
_BATCH = 10_000


def _json_default(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()  # dates, times, timestamps
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()  # numpy values
    try:
        return float(value)  # Decimal
    except (TypeError, ValueError):
        return str(value)  # UUID, intervals


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=_json_default)
    return value


def write_result(rel: duckdb.DuckDBPyRelation | None, fmt: str = "table", out: TextIO | None = None) -> int | None:
    """Write a query result as a terminal table, CSV (header row) or a JSON array of objects.

    ``table`` shows a sample of the rows when there are many (DuckDB's renderer); ``csv`` and
    ``json`` stream every row. A statement without a result (``CREATE ...``) writes nothing.

    Returns
    -------
    int or None
        Rows written for ``csv`` and ``json``; ``None`` for ``table`` and for no result.
    """
    if fmt not in FORMATS:
        raise ValueError(f"output format {fmt!r} is not one of {list(FORMATS)}")
    out = out or sys.stdout
    if rel is None:
        return None
    if fmt == "table":
        with contextlib.redirect_stdout(out):
            rel.show(max_width=shutil.get_terminal_size((160, 40)).columns)
        return None
    columns = rel.columns
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        while batch := rel.fetchmany(_BATCH):
            writer.writerows([_csv_value(v) for v in row] for row in batch)
            n += len(batch)
        return n
    out.write("[")
    while batch := rel.fetchmany(_BATCH):
        for row in batch:
            out.write(
                ("," if n else "") + "\n" + json.dumps(dict(zip(columns, row, strict=True)), default=_json_default)
            )
            n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def run_query(settings: Settings, sql: str, fmt: str = "table", out: TextIO | None = None) -> int | None:
    """Run ``sql`` against the lake's views and write the result (see :func:`write_result`)."""
    import duckdb

    con = connect(settings)
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise QueryError(f"query failed: {reason}") from e
    return write_result(rel, fmt, out)
