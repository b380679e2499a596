"""Ingestion: round trips for every input layout and counts location, identity, errors, S3."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipelines.dataset import open_dataset
from pipelines.errors import InputError
from pipelines.ingest import ingest, plan_parts
from pipelines.lake import PATHS, Lake
from pipelines.sample import write_sample
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """An in-process Dask cluster shared by the module (the CLI tests use worker processes)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def small(settings: Settings) -> Settings:
    """Small parts and shards, so that tiny files still make several parts of several shards."""
    return settings.model_copy(update={"part_cells": 64, "shard_cells": 16})


def expected(path: Path, counts_in: str = "X") -> tuple[sp.csr_matrix, pd.DataFrame, pd.DataFrame]:
    """Counts, obs and var as anndata reads them from the source file."""
    a = ad.read_h5ad(path)
    if counts_in == "layers":
        return sp.csr_matrix(a.layers["counts"]), a.obs, a.var
    if counts_in == "raw":
        return sp.csr_matrix(a.raw.X), a.obs, a.raw.var
    return sp.csr_matrix(a.X), a.obs, a.var


def assert_round_trip(settings: Settings, dataset_id: str, path: Path, counts_in: str = "X") -> None:
    x, obs, var = expected(path, counts_in)
    ds = open_dataset(Lake(settings), dataset_id)
    assert (ds.n_obs, ds.n_vars) == x.shape
    back = ds.to_anndata()
    assert (back.X != x).nnz == 0
    assert back.X.dtype == x.dtype
    pd.testing.assert_frame_equal(back.obs, obs)
    pd.testing.assert_frame_equal(back.var, var)
    # Every part is an AnnData of its own, readable with anndata's API alone.
    for part in ds.parts:
        piece = ad.read_zarr(ds.part_group(part.index))
        assert (piece.X != x[part.start : part.stop]).nnz == 0
        pd.testing.assert_frame_equal(piece.obs, obs.iloc[part.start : part.stop])
        pd.testing.assert_frame_equal(piece.var, var)
    stats = ds.cell_stats()
    np.testing.assert_allclose(stats["total_counts"], np.asarray(x.sum(axis=1)).ravel())
    np.testing.assert_array_equal(stats["n_genes"], np.diff(x.indptr))


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_round_trip_layouts(settings_file: Settings, client, tmp_path: Path, layout: str) -> None:
    settings = small(settings_file)
    path = write_sample(tmp_path / f"{layout}.h5ad", cells=150, genes=600, seed=5, layout=layout)
    result = ingest(settings, str(path), client=client)
    assert not result.already and result.n_obs == 150 and result.n_parts == 3
    assert_round_trip(settings, result.dataset_id, path)
    ds = open_dataset(Lake(settings), result.dataset_id)
    assert ds.attrs["source_layout"] == layout
    assert [(p.start, p.stop) for p in ds.parts] == [(0, 50), (50, 100), (100, 150)]  # at most 64, equal


@pytest.mark.parametrize("counts_in", ["layers", "raw"])
def test_counts_found_in_layers_or_raw(settings_file: Settings, client, tmp_path: Path, counts_in: str) -> None:
    settings = small(settings_file)
    path = write_sample(tmp_path / "v.h5ad", cells=90, genes=400, seed=6, counts_in=counts_in)
    result = ingest(settings, str(path), client=client)
    assert result.counts_source == {"layers": "layers/counts", "raw": "raw/X"}[counts_in]
    assert_round_trip(settings, result.dataset_id, path, counts_in)


@pytest.mark.parametrize("var_ids", ["ensembl_id", "gene_ids"])
def test_gene_ids_from_a_var_column(settings_file: Settings, client, tmp_path: Path, var_ids: str) -> None:
    settings = small(settings_file)
    path = write_sample(tmp_path / "g.h5ad", cells=70, genes=300, seed=7, var_ids=var_ids)
    result = ingest(settings, str(path), client=client)
    ds = open_dataset(Lake(settings), result.dataset_id)
    assert ds.gene_id_source == f"var/{var_ids}"
    np.testing.assert_array_equal(ds.gene_ids, ad.read_h5ad(path).var[var_ids].to_numpy())
    assert_round_trip(settings, result.dataset_id, path)


def test_integer_obs_index_becomes_string_cell_ids(settings_file: Settings, client, tmp_path: Path) -> None:
    settings = small(settings_file)
    path = write_sample(tmp_path / "i.h5ad", cells=80, genes=300, seed=8, obs_index="integer")
    result = ingest(settings, str(path), client=client)
    obs = open_dataset(Lake(settings), result.dataset_id).obs
    assert list(obs.index[:3]) == ["0", "1", "2"]
    assert obs.index.is_unique and len(obs) == 80


def test_identity_raw_copy_and_incoming_removed(settings_file: Settings, client, tmp_path: Path) -> None:
    import hashlib

    settings = small(settings_file)
    lake = Lake(settings)
    path = write_sample(tmp_path / "up.h5ad", cells=100, genes=500, seed=9)
    lake.put(path, "incoming/lab/up.h5ad")
    result = ingest(settings, "incoming/lab/up.h5ad", client=client)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.dataset_id == sha[:16]
    assert lake.sha256(PATHS.raw(result.dataset_id)) == sha
    assert not lake.exists("incoming/lab/up.h5ad")
    assert lake.is_published(PATHS.zarr(result.dataset_id))
    info = lake.commit_info(PATHS.zarr(result.dataset_id))
    assert info["source_sha256"] == sha and info["n_obs"] == 100
    assert not lake.ls("_staging", recursive=True) or all(
        not p.startswith("_staging/zarr") for p in lake.fs.find(lake.path("_staging"))
    )


def test_raw_copy_is_checked_and_a_damaged_one_replaced(settings_file: Settings, tmp_path: Path) -> None:
    from pipelines.ingest import raw

    lake = Lake(settings_file)
    path = write_sample(tmp_path / "r.h5ad", cells=40, genes=200, seed=12)
    up = raw.resolve_upload(lake, str(path))
    fp = raw.fingerprint(lake, up)
    assert fp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and fp.size == path.stat().st_size
    rel = raw.store_raw(lake, up, fp)
    assert rel == PATHS.raw(fp.dataset_id) and raw.raw_is_verified(lake, fp)
    damaged = bytearray(lake.read_bytes(rel))
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one byte flipped
    lake.write_bytes(rel, bytes(damaged))
    assert not raw.raw_is_verified(lake, fp)
    raw.store_raw(lake, up, fp)  # a copy that does not verify is made again
    assert lake.read_bytes(rel) == path.read_bytes()


@pytest.mark.integration
def test_s3_raw_copy_is_checked_by_etag_and_read_back_otherwise(
    settings_s3: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server-side copy whose ETag is the hashed upload's needs no read-back; any other is read back."""
    from pipelines.ingest import raw

    lake = Lake(settings_s3)
    path = write_sample(tmp_path / "e.h5ad", cells=40, genes=200, seed=13)
    lake.put(path, "incoming/e.h5ad")
    up = raw.resolve_upload(lake, "incoming/e.h5ad")
    fp = raw.fingerprint(lake, up)
    assert fp.etag == f'"{hashlib.md5(path.read_bytes()).hexdigest()}"'  # noqa: S324 - S3's ETag
    read_backs = []
    stream = raw._stream_digests
    monkeypatch.setattr(raw, "_stream_digests", lambda f, *, sha: read_backs.append(sha) or stream(f, sha=sha))
    rel = raw.store_raw(lake, up, fp)
    assert read_backs == [] and lake.read_bytes(rel) == path.read_bytes()
    # Without an ETag to compare (an upload of several parts, say), the copy is read back.
    lake.rm(rel)
    raw.store_raw(lake, up, replace(fp, etag=None))
    assert False in read_backs and lake.read_bytes(rel) == path.read_bytes()


@pytest.mark.integration
def test_s3_upload_replaced_during_the_hash_is_refused(settings_s3: Settings, tmp_path: Path, monkeypatch) -> None:
    from pipelines.errors import LakeError
    from pipelines.ingest import raw

    lake = Lake(settings_s3)
    first = write_sample(tmp_path / "a.h5ad", cells=40, genes=200, seed=14)
    second = write_sample(tmp_path / "b.h5ad", cells=40, genes=200, seed=15)
    lake.put(first, "incoming/a.h5ad")
    up = raw.resolve_upload(lake, "incoming/a.h5ad")
    stream = raw._stream_digests

    uploads = [second, first]

    def replaced_midway(f, *, sha, out=None):
        lake.put(uploads.pop(0), "incoming/a.h5ad")  # the user uploads again while the first is being read
        return stream(f, sha=sha, out=out)

    monkeypatch.setattr(raw, "_stream_digests", replaced_midway)
    with pytest.raises(LakeError, match="was replaced while it was read"):
        raw.fingerprint(lake, up)
    with pytest.raises(LakeError, match="was replaced while it was read"):  # the same when the read is spooled
        raw.fingerprint(lake, up, tmp_path / "spool.h5ad")


def test_parts_are_of_equal_size_and_at_most_part_cells() -> None:
    assert plan_parts(0, 64) == []
    assert plan_parts(50_000, 16_384) == [(0, 0, 12_500), (1, 12_500, 25_000), (2, 25_000, 37_500), (3, 37_500, 50_000)]
    for n_obs, part_cells in [(1, 64), (64, 64), (65, 64), (130, 64), (200_000, 16_384), (99_991, 7)]:
        parts = plan_parts(n_obs, part_cells)
        sizes = [b - a for _, a, b in parts]
        assert len(parts) == -(-n_obs // part_cells) and max(sizes) <= part_cells and max(sizes) - min(sizes) <= 1
        assert [i for i, _, _ in parts] == list(range(len(parts)))
        assert parts[0][1] == 0 and parts[-1][2] == n_obs
        assert all(parts[k][2] == parts[k + 1][1] for k in range(len(parts) - 1))


ENSEMBL = [f"ENSG{i:011d}" for i in range(50)]
SYMBOLS = [f"g{i}" for i in range(50)]


@pytest.mark.parametrize(
    "var",
    [
        pd.DataFrame(index=ENSEMBL),
        pd.DataFrame({"gene_ids": ENSEMBL}, index=SYMBOLS),
        pd.DataFrame({"ensembl_id": pd.Categorical(ENSEMBL)}, index=SYMBOLS),
        pd.DataFrame({"other": ENSEMBL, "n": np.arange(50)}, index=SYMBOLS),
        pd.DataFrame({"gene_ids": pd.array(ENSEMBL, dtype="string")}, index=SYMBOLS),
        pd.DataFrame({"n": np.arange(50)}, index=SYMBOLS),
    ],
    ids=["index", "string-column", "categorical-column", "other-column", "nullable-string-column", "none"],
)
def test_gene_ids_are_found_with_h5py_as_with_the_dataframe(tmp_path: Path, var: pd.DataFrame) -> None:
    from pipelines.ingest.source import gene_id_source, gene_id_source_h5

    path = tmp_path / "v.h5ad"
    with ad.settings.override(allow_write_nullable_strings=True):
        ad.AnnData(X=sp.csr_matrix((3, len(var)), dtype=np.float32), var=var).write_h5ad(path)
    with h5py.File(path, "r") as f:
        assert gene_id_source_h5(f, "var") == gene_id_source(ad.read_h5ad(path).var)


def test_cluster_start_waits_for_the_hash_only_when_a_raw_copy_has_the_same_size(settings_file: Settings) -> None:
    from pipelines.ingest import raw
    from pipelines.ingest.run import _may_be_a_reupload

    lake = Lake(settings_file)
    lake.write_bytes("incoming/a.h5ad", b"x" * 100)
    up = raw.resolve_upload(lake, "incoming/a.h5ad")
    assert not _may_be_a_reupload(lake, up)  # no raw/ yet
    lake.write_bytes(PATHS.raw("0123456789abcdef"), b"y" * 99)
    assert not _may_be_a_reupload(lake, up)
    lake.write_bytes(PATHS.raw("fedcba9876543210"), b"z" * 100)
    assert _may_be_a_reupload(lake, up)


def test_same_bytes_again_is_a_no_op(settings_file: Settings, client, tmp_path: Path) -> None:
    settings = small(settings_file)
    lake = Lake(settings)
    path = write_sample(tmp_path / "same.h5ad", cells=100, genes=400, seed=10)
    first = ingest(settings, str(path), client=client)
    store = Path(lake.path(PATHS.zarr(first.dataset_id)))
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    lake.put(path, "incoming/again.h5ad")
    # A client that cannot compute anything: a second ingest must not need one.
    second = ingest(settings, "incoming/again.h5ad", client=object())
    assert second.already and second.dataset_id == first.dataset_id
    assert (second.n_obs, second.n_vars, second.n_parts) == (100, 400, 2)
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    assert not lake.exists("incoming/again.h5ad")  # its bytes are safe in raw/


def _write_h5(path: Path, build) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        build(f)
    return path


def _not_counts(tmp: Path) -> Path:
    a = ad.read_h5ad(write_sample(tmp / "src.h5ad", cells=30, genes=100))
    a.X = a.X.multiply(1 / np.maximum(a.X.sum(axis=1), 1)).tocsr().astype(np.float32)
    a.write_h5ad(tmp / "norm.h5ad")
    return tmp / "norm.h5ad"


def _truncated(tmp: Path) -> Path:
    data = write_sample(tmp / "full.h5ad", cells=60, genes=300).read_bytes()
    (tmp / "cut.h5ad").write_bytes(data[: len(data) // 2])
    return tmp / "cut.h5ad"


def _no_x(tmp: Path) -> Path:
    from anndata.io import write_elem

    return _write_h5(
        tmp / "nox.h5ad",
        lambda f: (write_elem(f, "obs", pd.DataFrame(index=["a"])), write_elem(f, "var", pd.DataFrame(index=["g"]))),
    )


def _awkward(tmp: Path) -> Path:
    from anndata.io import write_elem

    def build(f):
        write_elem(f, "obs", pd.DataFrame(index=["a", "b"]))
        write_elem(f, "var", pd.DataFrame(index=["g"]))
        g = f.create_group("X")
        g.attrs["encoding-type"] = "awkward-array"

    return _write_h5(tmp / "awk.h5ad", build)


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (
            lambda tmp: (tmp / "x.h5ad").write_bytes(b"not an hdf5 file at all" * 100) and tmp / "x.h5ad",
            "not_hdf5",
            "not an HDF5",
        ),
        (_truncated, "truncated", "truncated"),
        (_no_x, "no_matrix", "no X"),
        (_not_counts, "no_raw_counts", "non-integer value"),
        (_awkward, "unsupported_encoding", "awkward-array"),
    ],
    ids=["not-hdf5", "truncated", "no-x", "no-raw-counts", "unsupported-encoding"],
)
def test_unusable_files_raise_input_error(settings_file: Settings, tmp_path: Path, make, code, words) -> None:
    settings = small(settings_file)
    lake = Lake(settings)
    path = make(tmp_path)
    lake.put(path, "incoming/bad.h5ad")
    with pytest.raises(InputError, match=words) as info:
        ingest(settings, "incoming/bad.h5ad", client=object())
    assert info.value.code == code
    assert info.value.hint
    assert any("incoming/bad.h5ad" in note for note in info.value.__notes__)
    assert lake.exists("incoming/bad.h5ad")  # left for the quarantine
    assert lake.ls("raw") == [] and lake.ls("zarr") == []


def test_missing_file_is_an_input_error(settings_file: Settings, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ingest(settings_file, str(tmp_path / "nope.h5ad"), client=object())


@pytest.mark.integration
def test_s3_end_to_end(settings_s3: Settings, client, tmp_path: Path) -> None:
    settings = small(settings_s3)
    lake = Lake(settings)
    path = write_sample(tmp_path / "s3.h5ad", cells=140, genes=500, seed=11)
    lake.put(path, "incoming/s3.h5ad")
    result = ingest(settings, lake.url("incoming/s3.h5ad"), client=client)
    assert result.zarr_uri.startswith("s3://")
    assert not lake.exists("incoming/s3.h5ad")
    assert lake.exists(PATHS.raw(result.dataset_id))
    assert_round_trip(settings, result.dataset_id, path)
    lake.put(path, "incoming/s3-again.h5ad")
    again = ingest(settings, lake.url("incoming/s3-again.h5ad"), client=object())
    assert again.already and again.dataset_id == result.dataset_id


@pytest.mark.integration
def test_s3_csc_and_local_upload(settings_s3: Settings, client, tmp_path: Path) -> None:
    settings = small(settings_s3)
    path = write_sample(tmp_path / "csc.h5ad", cells=100, genes=300, seed=12, layout="csc")
    result = ingest(settings, str(path), client=client)  # a local file: uploaded into raw/
    assert Lake(settings).exists(PATHS.raw(result.dataset_id))
    assert path.exists()  # a local original is never removed
    assert_round_trip(settings, result.dataset_id, path)
