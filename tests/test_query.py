"""DuckDB over the lake: counts per model and dataset on file:// and on the rclone S3 server."""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.lake import PATHS, Lake, part_name
from pipelines.query import (
    committed_partitions,
    connect,
    extension_path,
    run_query,
    s3_secret_sql,
    write_result,
)
from pipelines.settings import Settings

DS_A, DS_B, DS_DIGITS = "0123456789abcdef", "fedcba9876543210", "1234567890123456"


def embedding_table(n: int, dim: int, seed: int, prefix: str = "cell") -> pa.Table:
    """Rows in the embedding Parquet schema: cell_id, embedding (fixed_size_list<float32>), cell_type."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(n * dim).astype(np.float32)
    return pa.table(
        {
            "cell_id": pa.array([f"{prefix}-{i}" for i in range(n)], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values), dim),
            "cell_type": pa.array([f"type-{i % 3}" for i in range(n)], pa.string()),
        }
    )


def publish_embeddings(settings: Settings, model: str, dataset_id: str, sizes: list[int], dim: int = 8) -> None:
    """One committed partition with one part per entry of ``sizes``."""
    lake = Lake(settings)
    with lake.publishing(PATHS.embeddings(model, dataset_id), info={"rows": sum(sizes)}) as stage:
        start = 0
        for part, n in enumerate(sizes):
            seed = zlib.crc32(f"{model}/{dataset_id}/{part}".encode())
            table = embedding_table(n, dim, seed=seed, prefix=f"c{start}")
            with lake.open(f"{stage}/{part_name(part)}.parquet", "wb") as f:
                pq.write_table(table, f)
            start += n


def write_unpublished(settings: Settings, model: str, dataset_id: str, n: int) -> None:
    """A part in the final place but without a commit marker (an S3 commit cut short)."""
    lake = Lake(settings)
    with lake.open(PATHS.embedding_part(model, dataset_id, 0), "wb") as f:
        pq.write_table(embedding_table(n, 8, seed=1), f)


@pytest.fixture(scope="module", params=["file", "s3"])
def two_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A lake (file:// and s3://, built once per module) with two models over three datasets."""
    tmp = tmp_path_factory.mktemp("query")
    settings = Settings(home=tmp / "home", lake_uri=f"file://{tmp / 'lake'}", pushgateway_url=None)
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        settings = settings.model_copy(
            update={
                "lake_uri": f"s3://{s3.bucket}/query-{tmp.name}",
                "s3_endpoint_url": s3.endpoint_url,
                "s3_access_key": s3.access_key,
                "s3_secret_key": s3.secret_key,
            }
        )
    publish_embeddings(settings, "gf-a", DS_A, [40, 25])
    publish_embeddings(settings, "gf-a", DS_B, [30])
    publish_embeddings(settings, "gf-b", DS_A, [40, 25], dim=16)
    publish_embeddings(settings, "gf-b", DS_DIGITS, [7], dim=16)
    write_unpublished(settings, "gf-c", DS_A, 11)
    return settings


def test_counts_per_model_and_dataset(two_models: Settings) -> None:
    con = connect(two_models)
    rows = con.execute("SELECT model, dataset_id, count(*) FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("gf-a", DS_A, 65), ("gf-a", DS_B, 30), ("gf-b", DS_A, 65), ("gf-b", DS_DIGITS, 7)]
    # a dataset id of digits only stays a string; widths differ per model
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE embeddings)").fetchall())
    assert types["dataset_id"] == "VARCHAR" and types["model"] == "VARCHAR"
    widths = con.execute("SELECT model, min(len(embedding)), max(len(embedding)) FROM embeddings GROUP BY 1 ORDER BY 1")
    assert widths.fetchall() == [("gf-a", 8, 8), ("gf-b", 16, 16)]
    assert con.execute("SELECT count(DISTINCT cell_type) FROM embeddings").fetchone()[0] == 3


def test_uncommitted_partitions_are_invisible(two_models: Settings) -> None:
    lake = Lake(two_models)
    assert lake.exists(PATHS.embedding_part("gf-c", DS_A, 0))
    assert ("gf-c", DS_A) not in committed_partitions(lake)
    con = connect(two_models)
    assert con.execute("SELECT count(*) FROM embeddings WHERE model = 'gf-c'").fetchone()[0] == 0
    # staged work (what a crashed writer leaves) is not read either
    with pytest.raises(RuntimeError), lake.publishing(PATHS.embeddings("gf-d", DS_A)) as stage:
        with lake.open(f"{stage}/part-00000.parquet", "wb") as f:
            pq.write_table(embedding_table(5, 8, seed=2), f)
        raise RuntimeError("crash before commit")
    assert connect(two_models).execute("SELECT count(*) FROM embeddings WHERE model = 'gf-d'").fetchone()[0] == 0


def test_empty_lake_has_views(settings_file: Settings) -> None:
    con = connect(settings_file)
    assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM cells").fetchone()[0] == 0


def test_extensions_come_from_the_packages(settings_s3: Settings) -> None:
    import duckdb

    assert extension_path("httpfs").name == "httpfs.duckdb_extension"
    assert f"v{duckdb.__version__}" in str(extension_path("vss"))
    con = connect(settings_s3)
    loaded = dict(con.execute("SELECT extension_name, loaded FROM duckdb_extensions()").fetchall())
    assert loaded["httpfs"] and loaded["vss"]
    assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0] is False
    assert con.execute("SELECT current_setting('autoload_known_extensions')").fetchone()[0] is False
    secret = con.execute("SELECT type, scope FROM duckdb_secrets()").fetchall()
    assert secret == [("s3", [f"s3://{settings_s3.lake_uri[5:].split('/')[0]}"])]


def test_secret_follows_the_endpoint_scheme() -> None:
    s = Settings(lake_uri="s3://bucket/x", s3_endpoint_url="https://minio.example:9000", s3_access_key="k")
    sql = s3_secret_sql(s)
    assert "ENDPOINT 'minio.example:9000'" in sql and "USE_SSL true" in sql and "URL_STYLE 'path'" in sql
    assert "USE_SSL false" in s3_secret_sql(s.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9000"}))
    with pytest.raises(Exception, match="not an http"):
        s3_secret_sql(s.model_copy(update={"s3_endpoint_url": "minio:9000"}))


def test_output_formats(two_models: Settings) -> None:
    sql = "SELECT model, dataset_id, count(*) AS n FROM embeddings GROUP BY ALL ORDER BY ALL"
    out = io.StringIO()
    assert run_query(two_models, sql, "csv", out) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0] == {"model": "gf-a", "dataset_id": DS_A, "n": "65"}
    out = io.StringIO()
    run_query(two_models, "SELECT cell_id, embedding FROM embeddings WHERE model = 'gf-a' LIMIT 2", "json", out)
    records = json.loads(out.getvalue())
    assert len(records) == 2 and len(records[0]["embedding"]) == 8
    out = io.StringIO()
    run_query(two_models, sql, "table", out)
    assert "gf-b" in out.getvalue() and DS_DIGITS in out.getvalue()
    out = io.StringIO()
    con = connect(two_models)
    assert write_result(con.sql("SELECT 1 AS x WHERE false"), "json", out) == 0 and json.loads(out.getvalue()) == []


def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("SCLAKE_HOME", str(settings.home))
    monkeypatch.setenv("SCLAKE_LAKE_URI", settings.lake_uri)
    for name in ("s3_endpoint_url", "s3_access_key", "s3_secret_key"):
        value = getattr(settings, name)
        if value:
            monkeypatch.setenv(f"SCLAKE_{name.upper()}", value)


def test_cli_query(two_models: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _cli_env(monkeypatch, two_models)
    sql = "SELECT model, count(*) AS n FROM embeddings GROUP BY 1 ORDER BY 1"
    assert main(["query", sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"model": "gf-a", "n": 95}, {"model": "gf-b", "n": 72}]
    assert main(["query", "SELECT no_such_column FROM embeddings"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sclake: error: query failed:") and "no_such_column" in err and "\n" not in err
    assert main(["query", "SELECT 1", "--format", "xml"]) != 0


def test_docs_recipe_runs(two_models: Settings, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The notebook recipe in docs/query.md, run as written against the S3 lake."""
    if not two_models.is_s3:
        pytest.skip("the recipe is written for an s3:// lake")
    from pathlib import Path

    lake = Lake(two_models)
    obs = pa.table({"cell_id": ["c0", "c1"], "cell_type": ["b", "t"]})
    with lake.publishing(PATHS.cells(DS_A)) as stage:
        with lake.open(f"{stage}/obs.parquet", "wb") as f:
            pq.write_table(obs, f)
    text = (Path(__file__).parents[1] / "docs" / "query.md").read_text()
    code = text.split("<!-- recipe: tested by tests/test_query.py -->\n```python\n", 1)[1].split("```", 1)[0]
    _cli_env(monkeypatch, two_models)
    namespace: dict = {}
    exec(compile(code, "docs/query.md", "exec"), namespace)  # noqa: S102 - the documented recipe itself
    con = namespace["con"]
    # the recipe's glob also reads the partition left uncommitted (gf-c); sclake's views do not
    counts = con.execute("SELECT model, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall()
    assert counts == [("gf-a", 95), ("gf-b", 72), ("gf-c", 11)]
    assert con.execute("SELECT count(*) FROM cells WHERE dataset_id = ?", [DS_A]).fetchone()[0] == 2
    assert "gf-a" in capsys.readouterr().out


def test_cells_view_from_an_ingested_dataset(settings_s3: Settings, tmp_path) -> None:
    """Ingestion publishes the obs of a dataset as Parquet; the cells view reads it (S3 lake)."""
    from distributed import Client

    from pipelines.dataset import open_dataset
    from pipelines.ingest import ingest
    from pipelines.sample import write_sample

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        sample = write_sample(tmp_path / "a.h5ad", cells=120, genes=300, seed=5)
        result = ingest(settings_s3, str(sample), client=client)
    lake = Lake(settings_s3)
    assert lake.is_published(PATHS.cells(result.dataset_id))
    stamp = lake.commit_info(PATHS.cells(result.dataset_id))
    con = connect(settings_s3)
    obs = open_dataset(lake, result.dataset_id).obs
    sql = "SELECT cell_type, count(*) FROM cells WHERE dataset_id = ? GROUP BY 1 ORDER BY 1"
    rows = con.execute(sql, [result.dataset_id])
    assert rows.fetchall() == sorted(obs["cell_type"].astype(str).value_counts().items())
    ids = [r[0] for r in con.execute("SELECT cell_id FROM cells ORDER BY cell_id").fetchall()]
    assert ids == sorted(obs.index.astype(str))
    with lake.open(PATHS.cells_obs(result.dataset_id)) as f:
        meta = pq.read_schema(f).metadata
    assert meta[b"encoding-type"] == b"sclake.cells-obs" and meta[b"dataset_id"] == result.dataset_id.encode()
    assert lake.commit_info(PATHS.cells(result.dataset_id)) == stamp  # a connection writes nothing


def _lake_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_queries_never_write_and_old_datasets_are_named(settings_file: Settings, tmp_path, caplog) -> None:
    """A query, valid or not, leaves the lake as it was; a dataset without a cells table (a lake
    written before ingestion published it) is named in a warning, and ingesting its raw copy
    again writes the table."""
    from distributed import Client

    from pipelines.ingest import ingest
    from pipelines.query import QueryError, run_query
    from pipelines.sample import write_sample

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        sample = write_sample(tmp_path / "a.h5ad", cells=80, genes=200, seed=7)
        result = ingest(settings_file, str(sample), client=client)
    lake = Lake(settings_file)
    lake.rm(PATHS.cells(result.dataset_id), recursive=True)  # as an older version left it
    root = Path(lake.path(""))
    before = _lake_files(root)
    with caplog.at_level("WARNING", logger="pipelines.query"):
        assert run_query(settings_file, "SELECT count(*) FROM cells", "csv", out=io.StringIO()) == 1
    assert result.dataset_id in caplog.text and f"raw/{result.dataset_id}.h5ad" not in caplog.text
    assert "sclake ingest raw/<dataset_id>.h5ad" in caplog.text
    with pytest.raises(QueryError):
        run_query(settings_file, "SELEC nonsense FROM cells", "csv", out=io.StringIO())
    assert _lake_files(root) == before
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        again = ingest(settings_file, PATHS.raw(result.dataset_id), client=client)
    assert again.already and lake.exists(PATHS.raw(result.dataset_id))
    out = io.StringIO()
    run_query(settings_file, "SELECT count(*) AS n FROM cells", "csv", out=out)
    assert out.getvalue().splitlines()[1] == "80"
