"""pipelines.frames reads anndata's dataframes from Zarr as anndata + writer.obs_columns do."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zarr
from anndata.io import read_elem, write_elem

from pipelines import frames
from pipelines.embed import writer

N = 7


def _obs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    missing = np.array([False, True, False, False, True, False, False])
    floats = rng.normal(size=N)
    floats[missing] = np.nan
    return pd.DataFrame(
        {
            "float": floats,
            "float32": rng.normal(size=N).astype(np.float32),
            "int": np.arange(N, dtype=np.int64) * 3,
            "uint8": np.arange(N, dtype=np.uint8),
            "flag": np.arange(N) % 2 == 0,
            "text": [f"t{i}" for i in range(N)],
            "cat": pd.Categorical(["a", None, "b", "a", None, "c", "b"]),
            "cat_ordered": pd.Categorical(["lo", "hi", "lo", "lo", "hi", "hi", "lo"], ordered=True),
            "cat_float": pd.Categorical([0.5, np.nan, 1.5, 0.5, 1.5, np.nan, 0.5]),
            "cat_int": pd.Categorical([1, 2, 1, 3, 3, 2, 1]),
            "cat_int_missing": pd.Categorical(np.array([1, 2, -1, 3, 3, 2, 1], dtype=np.int32)).remove_categories(-1),
            "cat_bool_missing": pd.Categorical([True, None, False, True, True, False, True]),
            "nullable_int": pd.array([1, None, 3, 4, None, 6, 7], dtype="Int32"),
            "nullable_bool": pd.array([True, None, False, True, None, False, True], dtype="boolean"),
            "nullable_str": pd.array(["x", None, "y", "z", None, "x", "y"], dtype="string"),
            "half": np.arange(N, dtype=np.float16),  # not a scalar type of the schema: left out
        },
        index=pd.Index([f"cell-{i}" for i in range(N)]),
    )


def _group(tmp_path, obs: pd.DataFrame) -> zarr.Group:
    root = zarr.open_group(str(tmp_path / "frame.zarr"), mode="w")
    with anndata.settings.override(allow_write_nullable_strings=True):
        write_elem(root, "obs", obs)
    return root["obs"]


def test_same_arrays_as_anndata(tmp_path):
    obs = _obs()
    group = _group(tmp_path, obs)
    index, columns = frames.read_frame(group)
    expected = writer.obs_columns(read_elem(group))
    got = writer.scalar_columns(columns)
    assert index.to_pylist() == list(obs.index)
    assert list(got) == list(expected)  # same columns, same order
    assert "half" not in got
    for name, arr in expected.items():
        assert got[name].type == arr.type, name
        assert got[name].equals(arr), (name, got[name], arr)
    assert got["cat"].null_count == 2 and got["float"].null_count == 2
    assert got["nullable_int"].type == pa.int32() and got["nullable_str"].to_pylist()[1] is None
    assert got["cat_int_missing"].type == pa.int32() and got["cat_int_missing"].to_pylist()[2] is None
    assert got["cat_bool_missing"].to_pylist()[:2] == [True, None]


def test_var_column(tmp_path):
    var = pd.DataFrame({"ids": pd.Categorical(["ENSG1.2", "ENSG2", "ENSG1.2"])}, index=["g1", "g2", "g3"])
    group = _group(tmp_path, var)
    assert frames.frame_column(group, None).to_pylist() == ["g1", "g2", "g3"]
    assert frames.frame_column(group, "ids").to_pylist() == ["ENSG1.2", "ENSG2", "ENSG1.2"]


def test_unsupported_elements(tmp_path):
    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    write_elem(root, "m", np.zeros((3, 2)))
    with pytest.raises(frames.Unsupported, match="2-D array"):
        frames.read_column(root["m"])
    write_elem(root, "d", {"a": np.zeros(2)})
    with pytest.raises(frames.Unsupported, match="not 'dataframe'"):
        frames.read_frame(root["d"])


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.mark.parametrize("unsupported", [False, True], ids=["frames", "anndata"])
def test_token_parts_carry_obs_as_anndata_reads_it(
    settings_file, tiny_model, client, tmp_path, monkeypatch, unsupported
):
    """The token parts' cell ids and obs columns are those anndata reads, by either route (the
    second: as for an element of an encoding pipelines.frames does not know); the cells table
    has the same values."""
    import duckdb

    from pipelines.dataset import open_dataset
    from pipelines.embed.tokens import read_token_part, tokenize_dataset
    from pipelines.ingest import ingest
    from pipelines.lake import PATHS, Lake
    from pipelines.sample import write_sample

    settings = settings_file.model_copy(update={"part_cells": 64, "shard_cells": 16})
    path = write_sample(tmp_path / "s.h5ad", cells=130, genes=700, seed=5)
    a = anndata.read_h5ad(path)
    extra = _obs()
    for name in extra.columns:
        a.obs[name] = np.resize(np.asarray(extra[name]), a.n_obs) if name != "half" else extra[name].iloc[0]
        if isinstance(extra[name].dtype, pd.CategoricalDtype | pd.api.extensions.ExtensionDtype):
            a.obs[name] = a.obs[name].astype(extra[name].dtype)
    a.obs["n_counts"] = np.asarray(a.X.sum(axis=1)).ravel() * 2.0
    with anndata.settings.override(allow_write_nullable_strings=True):
        a.write_h5ad(path)
    lake = Lake(settings)
    dataset_id = ingest(settings, str(path), client=client).dataset_id
    if unsupported:

        def unknown(group):
            raise frames.Unsupported(f"{group.path}/x: encoding-type 'new-kind'")

        monkeypatch.setattr(frames, "read_frame", unknown)
    result = tokenize_dataset(settings, dataset_id, tiny_model)
    ds = open_dataset(lake, dataset_id)
    parts = sorted(lake.ls(PATHS.tokens(dataset_id, result.vocab_hash), suffix=".parquet"))
    assert len(parts) == 3
    for i, rel in enumerate(parts):
        part = read_token_part(lake, rel)
        obs = ds.obs_part(i)
        assert part.cell_ids.to_pylist() == list(obs.index.astype(str))
        expected = writer.obs_columns(obs)
        assert part.obs.column_names == [f"{writer.OBS_PREFIX}{k}" for k in expected]
        for name, arr in expected.items():
            assert part.obs.column(f"{writer.OBS_PREFIX}{name}").combine_chunks().equals(arr), name
    cells = duckdb.sql(
        f"SELECT cell_id, cat_int_missing, cat_bool_missing FROM '{lake.path(PATHS.cells_obs(dataset_id))}'"
    ).fetchall()
    assert [r[0] for r in cells] == list(ds.cell_ids())
    assert [r[1:] for r in cells[:3]] == [(1, True), (2, None), (None, False)]
