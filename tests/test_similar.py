"""``sclake similar``: exact cosine search agrees with numpy; HNSW is used when asked or when the table is large."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.errors import InputError
from pipelines.lake import PATHS, Lake, part_name
from pipelines.query import connect
from pipelines.settings import Settings
from pipelines.similar import find_similar

MODEL, DIM = "gf-sim", 24
DATASETS = {"0123456789abcdef": 180, "fedcba9876543210": 120}


def clustered(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Cells around 6 random centres, so that neighbourhoods are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, DIM)) * 3
    labels = rng.integers(0, 6, size=n)
    return (centres[labels] + rng.standard_normal((n, DIM))).astype(np.float32), [f"t{i}" for i in labels]


@pytest.fixture(scope="module")
def lake_vectors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[tuple[str, str], np.ndarray]]:
    """A file:// lake with two datasets of one model (cell ids shared between them), and the vectors written."""
    tmp = tmp_path_factory.mktemp("similar")
    settings = Settings(home=tmp / "home", lake_uri=f"file://{tmp / 'lake'}", pushgateway_url=None)
    lake = Lake(settings)
    vectors = {}
    for seed, (dataset_id, n) in enumerate(DATASETS.items()):
        x, types = clustered(n, seed)
        with lake.publishing(PATHS.embeddings(MODEL, dataset_id)) as stage:
            for part, rows in enumerate(np.array_split(np.arange(n), 2)):
                table = pa.table(
                    {
                        "cell_id": [f"cell-{i}" for i in rows],
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), DIM),
                        "cell_type": [types[i] for i in rows],
                    }
                )
                with lake.open(f"{stage}/{part_name(part)}.parquet", "wb") as f:
                    pq.write_table(table, f)
        for i in range(n):
            vectors[(dataset_id, f"cell-{i}")] = x[i]
    return settings, vectors


def brute_force(vectors: dict[tuple[str, str], np.ndarray], query: np.ndarray, k: int) -> list[tuple[tuple, float]]:
    keys = list(vectors)
    m = np.stack([vectors[key] for key in keys]).astype(np.float64)
    q = query.astype(np.float64)
    dist = 1.0 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    order = np.argsort(dist, kind="stable")[:k]
    return [(keys[i], float(dist[i])) for i in order]


def test_exact_agrees_with_numpy(lake_vectors) -> None:
    settings, vectors = lake_vectors
    con = connect(settings)
    for dataset_id, cell in [("0123456789abcdef", "cell-7"), ("fedcba9876543210", "cell-99")]:
        result = find_similar(settings, MODEL, cell, dataset_id=dataset_id, k=10, con=con)
        assert result.method == "exact" and result.searched == sum(DATASETS.values())
        got = [((n["dataset_id"], n["cell_id"]), n["distance"]) for n in result.neighbors]
        want = brute_force(vectors, vectors[(dataset_id, cell)], 10)
        assert got[0][0] == (dataset_id, cell) and abs(got[0][1]) < 1e-6  # the cell itself comes first
        assert [key for key, _ in got] == [key for key, _ in want]
        np.testing.assert_allclose([d for _, d in got], [d for _, d in want], atol=1e-6)
        assert all("cell_type" in n for n in result.neighbors)


def test_within_dataset(lake_vectors) -> None:
    settings, vectors = lake_vectors
    result = find_similar(settings, MODEL, "cell-3", dataset_id="fedcba9876543210", k=5, within_dataset=True)
    assert result.searched == DATASETS["fedcba9876543210"]
    mine = {key: v for key, v in vectors.items() if key[0] == "fedcba9876543210"}
    want = brute_force(mine, vectors[("fedcba9876543210", "cell-3")], 5)
    assert [(n["dataset_id"], n["cell_id"]) for n in result.neighbors] == [key for key, _ in want]


def test_hnsw_index(lake_vectors, tmp_path) -> None:
    settings, vectors = lake_vectors
    settings = settings.model_copy(update={"home": tmp_path / "home"})  # no index built yet
    query = ("0123456789abcdef", "cell-11")
    exact = find_similar(settings, MODEL, query[1], dataset_id=query[0], k=3)
    assert exact.method == "exact" and not (tmp_path / "home" / "vss").exists()

    hnsw = find_similar(settings, MODEL, query[1], dataset_id=query[0], k=10, index="hnsw")
    assert hnsw.method == "hnsw" and "HNSW" in hnsw.describe() and hnsw.searched == sum(DATASETS.values())
    got = [(n["dataset_id"], n["cell_id"]) for n in hnsw.neighbors]
    assert got[0] == query and hnsw.neighbors[0]["distance"] < 1e-6
    want = [key for key, _ in brute_force(vectors, vectors[query], 10)]
    assert len(set(got) & set(want)) >= 8  # approximate, but close on a table this small
    assert list(hnsw.neighbors[0]) == list(exact.neighbors[0])  # same columns, same order

    # the index is kept and reused; auto uses it once it exists
    (index,) = (tmp_path / "home" / "vss").glob("*.duckdb")
    built = index.stat().st_mtime_ns
    assert find_similar(settings, MODEL, "cell-4", dataset_id=query[0], k=3).method == "hnsw"
    assert index.stat().st_mtime_ns == built
    # auto also picks HNSW from the size threshold on
    fresh = settings.model_copy(update={"home": tmp_path / "other"})
    assert find_similar(fresh, MODEL, query[1], dataset_id=query[0], k=3, hnsw_min_rows=100).method == "hnsw"


def test_hnsw_index_follows_new_embeddings(any_settings: Settings) -> None:
    """A new partition of the model makes a new index; the stale one is removed (file:// and S3 lakes)."""
    settings = any_settings
    lake = Lake(settings)

    def publish(dataset_id: str, seed: int) -> None:
        x, types = clustered(40, seed)
        table = pa.table(
            {
                "cell_id": [f"c{i}" for i in range(40)],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
                "cell_type": types,
            }
        )
        with lake.publishing(PATHS.embeddings(MODEL, dataset_id)) as stage:
            with lake.open(f"{stage}/part-00000.parquet", "wb") as f:
                pq.write_table(table, f)

    publish("0123456789abcdef", 1)
    first = find_similar(settings, MODEL, "c1", k=3, index="hnsw")
    (old,) = (settings.home / "vss").glob("*.duckdb")
    publish("fedcba9876543210", 2)
    second = find_similar(settings, MODEL, "c1", dataset_id="fedcba9876543210", k=3, index="hnsw")
    (new,) = (settings.home / "vss").glob("*.duckdb")
    assert new != old and first.searched == 40 and second.searched == 80
    assert second.neighbors[0]["cell_id"] == "c1" and second.neighbors[0]["dataset_id"] == "fedcba9876543210"
    if settings.s3_secret_key:  # the S3 secret is never written into the index file
        assert settings.s3_secret_key.encode() not in new.read_bytes()


def test_errors_name_the_value(lake_vectors) -> None:
    settings, _ = lake_vectors
    with pytest.raises(InputError, match=r"occurs in 2 datasets") as e:
        find_similar(settings, MODEL, "cell-5")
    assert "--dataset" in str(e.value)
    with pytest.raises(InputError, match=r"model 'nope' has no embeddings.*gf-sim"):
        find_similar(settings, "nope", "cell-5")
    with pytest.raises(InputError, match=r"cell 'cell-999' has no gf-sim embedding"):
        find_similar(settings, MODEL, "cell-999", dataset_id="fedcba9876543210")
    with pytest.raises(ValueError, match="index 'ivf'"):
        find_similar(settings, MODEL, "cell-5", index="ivf")


def test_cli(lake_vectors, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    settings, _ = lake_vectors
    monkeypatch.setenv("SCLAKE_HOME", str(settings.home))
    monkeypatch.setenv("SCLAKE_LAKE_URI", settings.lake_uri)
    args = ["similar", "--model", MODEL, "--dataset", "0123456789abcdef", "--cell-id", "cell-2", "-k", "4"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "exact" and len(out["neighbors"]) == 4 and out["neighbors"][0]["cell_id"] == "cell-2"
    assert main([*args, "--index", "hnsw"]) == 0
    text = capsys.readouterr().out
    assert "approximate, HNSW index" in text and "cell-2" in text.splitlines()[2]
    assert main(["similar", "--model", MODEL, "--cell-id", "cell-2"]) == 1
    assert "occurs in 2 datasets" in capsys.readouterr().err
