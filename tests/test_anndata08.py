"""Files written by anndata 0.8 ingest exactly like the same data written by today's anndata.

``data/anndata08.h5ad`` was written by anndata 0.8.0 (``data/make_anndata08.py`` says how).
The test reads it, writes the same matrix, obs and var with today's anndata, runs both files
through ingest, validation, tokenisation and embedding (the tiny synthesized model), and
compares what the lake holds for each.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import open_dataset
from pipelines.embed import embed_dataset, tokenize_dataset
from pipelines.embed.tokens import read_token_part, vocabulary_for
from pipelines.lake import PATHS, Lake
from pipelines.orchestration.steps import process_upload
from pipelines.settings import Settings

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parent / "data" / "anndata08.h5ad"
CELLS, GENES = 96, 200


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: str) -> Settings:
    root = tmp_path_factory.mktemp("anndata08")
    return Settings(
        home=root / "home",
        lake_uri=f"file://{root / 'lake'}",
        models_dir=models_dir,
        models=tiny_model,
        pushgateway_url=None,
        part_cells=64,  # two parts: 48 + 48 cells
        shard_cells=16,
        dask_workers=1,
    )


@pytest.fixture(scope="module")
def today_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's matrix, obs and var written again by the anndata installed now."""
    old = ad.read_h5ad(FIXTURE)
    path = tmp_path_factory.mktemp("today") / "today.h5ad"
    ad.AnnData(X=old.X.copy(), obs=old.obs.copy(), var=old.var.copy()).write_h5ad(path, compression="gzip")
    return path


@pytest.fixture(scope="module")
def published(settings: Settings, today_file: Path, tiny_model: str) -> dict[str, str]:
    """Both files through ingest + validate + tokenize + embed; dataset id by writer."""
    from pipelines.dask_cluster import dask_client

    ids = {}
    with dask_client(settings) as client:
        for name, path in (("anndata08", FIXTURE), ("today", today_file)):
            result = process_upload(settings, str(path), client=client)
            assert result["outcome"] == "pass", result
            ids[name] = result["dataset_id"]
            tokenize_dataset(settings, result["dataset_id"], tiny_model, client=client)
    for dataset_id in ids.values():
        embed_dataset(settings, dataset_id, tiny_model, device="cpu", precision="fp32")
    return ids


def test_fixture_is_the_anndata08_file() -> None:
    """The committed bytes, a CSR of whole counts with the anndata 0.8 on-disk encodings."""
    import h5py

    assert FIXTURE.stat().st_size < 100_000
    with h5py.File(FIXTURE, "r") as f:
        assert dict(f.attrs) == {"encoding-type": "anndata", "encoding-version": "0.1.0"}
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert tuple(f["X"].attrs["shape"]) == (CELLS, GENES)
        assert f["obs"].attrs["encoding-version"] == "0.2.0"
        assert f["obs/cell_type"].attrs["encoding-type"] == "categorical"


def test_both_writers_give_identical_datasets(settings: Settings, published: dict[str, str], today_file: Path) -> None:
    old_bytes, new_bytes = FIXTURE.read_bytes(), today_file.read_bytes()
    assert old_bytes != new_bytes  # two different files ...
    assert published["anndata08"] == hashlib.sha256(old_bytes).hexdigest()[:16]
    assert published["today"] == hashlib.sha256(new_bytes).hexdigest()[:16]

    lake = Lake(settings)
    old, new = (open_dataset(lake, published[k]) for k in ("anndata08", "today"))
    assert len(old.parts) == len(new.parts) == 2
    a, b = old.to_anndata(), new.to_anndata()  # ... one dataset
    assert a.shape == b.shape == (CELLS, GENES)
    assert a.X.dtype == b.X.dtype
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    np.testing.assert_array_equal(old.gene_ids, new.gene_ids)
    # And what the lake holds is what the 0.8 file holds.
    src = ad.read_h5ad(FIXTURE)
    assert (a.X != src.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, src.obs)
    assert list(a.obs.columns) == ["cell_type", "donor", "n_counts", "n_genes", "barcode"]


def test_both_writers_give_identical_tokens(settings: Settings, published: dict[str, str], tiny_model: str) -> None:
    lake = Lake(settings)
    vocab = vocabulary_for(settings, tiny_model)
    for part in range(2):
        old, new = (
            read_token_part(lake, PATHS.token_part(published[k], vocab.hash, part)) for k in ("anndata08", "today")
        )
        assert old.cell_ids.equals(new.cell_ids)
        np.testing.assert_array_equal(old.tokens.ids, new.tokens.ids)
        np.testing.assert_array_equal(old.tokens.offsets, new.tokens.offsets)
        assert old.obs.equals(new.obs)
        assert len(old) == CELLS // 2 and old.tokens.ids.size > CELLS // 2 * 20


def test_both_writers_give_identical_embeddings(settings: Settings, published: dict[str, str], tiny_model: str) -> None:
    lake = Lake(settings)
    tables = {}
    for name, dataset_id in published.items():
        prefix = PATHS.embeddings(tiny_model, dataset_id)
        assert lake.is_published(prefix)
        parts = lake.ls(prefix, suffix=".parquet")
        assert [p.split("/")[-1] for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
        read = []
        for rel in parts:
            with lake.open(rel, "rb") as f:
                read.append(pq.read_table(f).replace_schema_metadata(None))
        tables[name] = read
    for old, new in zip(tables["anndata08"], tables["today"], strict=True):
        assert old.column_names == new.column_names
        assert "cell_type" in old.column_names and "barcode" in old.column_names
        assert old.equals(new), "the embeddings of the two files differ"
    assert sum(t.num_rows for t in tables["anndata08"]) == CELLS
