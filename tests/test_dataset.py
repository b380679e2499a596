"""The reader API of the Zarr dataset format, on file:// and s3:// lakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from pipelines.dataset import Dataset, open_dataset, open_store
from pipelines.errors import LakeError
from pipelines.ingest import ingest
from pipelines.lake import PATHS, Lake
from pipelines.sample import write_sample
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_reader_api(any_settings: Settings, client, tmp_path: Path) -> None:
    settings = any_settings.model_copy(update={"part_cells": 64, "shard_cells": 16})
    lake = Lake(settings)
    path = write_sample(tmp_path / "d.h5ad", cells=130, genes=700, seed=31)
    dataset_id = ingest(settings, str(path), client=client).dataset_id
    src = ad.read_h5ad(path)

    ds = open_dataset(lake, dataset_id)
    assert isinstance(ds, Dataset)
    assert repr(ds) == f"Dataset({dataset_id!r}, n_obs=130, n_vars=700, parts=3)"
    assert ds.url == lake.url(PATHS.zarr(dataset_id))
    assert (ds.attrs["encoding-type"], ds.attrs["encoding-version"]) == ("sclake.dataset", "0.1.0")
    assert (ds.n_obs, ds.n_vars, ds.nnz) == (130, 700, src.X.nnz)
    assert ds.counts_source == "X" and ds.gene_id_source == "index"
    assert [(p.index, p.start, p.stop, p.n_obs) for p in ds.parts] == [
        (0, 0, 43, 43),
        (1, 43, 86, 43),
        (2, 86, 130, 44),
    ]
    assert sum(p.nnz for p in ds.parts) == ds.nnz

    pd.testing.assert_frame_equal(ds.var, src.var)
    pd.testing.assert_frame_equal(ds.obs, src.obs)
    np.testing.assert_array_equal(ds.cell_ids(), src.obs_names.to_numpy())
    np.testing.assert_array_equal(ds.gene_ids, src.var_names.to_numpy())

    csr = ds.read_part_csr(1)
    assert isinstance(csr, sp.csr_matrix) and csr.shape == (43, 700)
    assert csr.indices.dtype == csr.indptr.dtype  # scipy-consistent index dtypes
    assert (csr != src.X[43:86]).nnz == 0
    part = ds.read_part(2)
    assert part.n_obs == 44 and list(part.obs_names) == list(src.obs_names[86:])
    pd.testing.assert_frame_equal(ds.obs_part(0), src.obs.iloc[:43])

    stats = ds.cell_stats()
    assert list(stats.columns) == ["total_counts", "n_genes", "part"]
    assert list(stats.index) == list(src.obs_names)
    np.testing.assert_allclose(stats["total_counts"], np.asarray(src.X.sum(axis=1)).ravel())
    np.testing.assert_array_equal(stats["n_genes"], np.diff(src.X.indptr))
    np.testing.assert_array_equal(stats["part"], np.repeat([0, 1, 2], [43, 43, 44]))

    whole = ds.to_anndata()
    assert (whole.X != src.X).nnz == 0
    with pytest.raises(IndexError, match="part 3 does not exist"):
        ds.read_part(3)


def test_open_dataset_refuses_what_is_not_published(settings_file: Settings) -> None:
    lake = Lake(settings_file)
    with pytest.raises(LakeError, match="not in the lake"):
        open_dataset(lake, "0123456789abcdef")
    # A Zarr group that is not in this format.
    url = lake.url("zarr/other.zarr")
    zarr.create_group(open_store(url, read_only=False), zarr_format=3, attributes={"encoding-type": "anndata"})
    with pytest.raises(LakeError, match="is not a Zarr dataset .encoding-type"):
        Dataset(url)
