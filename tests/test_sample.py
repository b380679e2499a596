"""Synthetic samples: readable by anndata, realistic shape, deterministic, variants for ingest tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.cli import main
from pipelines.models.vocabulary import vocabulary_genes
from pipelines.sample import write_sample


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample") / "s.h5ad", cells=600, genes=20_000, seed=3, block_cells=256)


def test_readable_by_anndata_with_expected_content(default_sample: Path) -> None:
    adata = ad.read_h5ad(default_sample)
    assert adata.shape == (600, 20_000)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.float32
    assert adata.X.has_canonical_format
    np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))  # integer counts
    assert adata.X.data.min() >= 1
    assert list(adata.obs.columns) == ["cell_type", "donor", "batch"]
    for col in ("cell_type", "donor", "batch"):
        assert adata.obs[col].dtype == "category"
    assert adata.obs["cell_type"].nunique() >= 5
    assert adata.obs["donor"].nunique() >= 3
    assert adata.obs_names[0] == "cell-000001" and adata.obs_names[-1] == "cell-000600"
    assert adata.var_names.str.match(r"^ENSG\d{11}$").all()
    assert "gene_symbol" in adata.var and adata.var["gene_symbol"].str.startswith("MT-").sum() == 13
    assert adata.var_names.is_unique


def test_realistic_statistics(default_sample: Path) -> None:
    adata = ad.read_h5ad(default_sample)
    genes_detected = np.diff(adata.X.indptr)
    assert 1000 <= np.median(genes_detected) <= 2000
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert np.std(np.log(totals)) > 0.2  # log-normal library sizes, not constant
    outside = ~adata.var_names.isin(set(vocabulary_genes("v1")) | set(vocabulary_genes("v2")))
    assert 0.07 <= outside.mean() <= 0.13
    # Each cell type has marker genes: type means differ strongly on some genes.
    means = np.vstack(
        [
            np.asarray(adata.X[(adata.obs["cell_type"] == t).to_numpy()].mean(axis=0)).ravel()
            for t in ["NK cell", "B cell"]
        ]
    )
    expressed = means.max(axis=0) > 1
    ratio = (means[0, expressed] + 0.1) / (means[1, expressed] + 0.1)
    assert (ratio > 4).sum() >= 20 and (ratio < 0.25).sum() >= 20
    # Overdispersion: variance well above the mean for expressed genes within one group.
    grp = ((adata.obs["cell_type"] == "NK cell") & (adata.obs["donor"] == "donor-1")).to_numpy()
    x = adata.X[grp].toarray()
    mean, var = x.mean(axis=0), x.var(axis=0)
    top = mean > 2
    assert np.median(var[top] / mean[top]) > 1.5


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = write_sample(tmp_path / "a.h5ad", cells=150, genes=3000, seed=7, block_cells=64)
    b = write_sample(tmp_path / "b.h5ad", cells=150, genes=3000, seed=7, block_cells=64)
    c = write_sample(tmp_path / "c.h5ad", cells=150, genes=3000, seed=8, block_cells=64)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_streamed_file_has_anndata_encoding(default_sample: Path) -> None:
    with h5py.File(default_sample) as f:
        assert f.attrs["encoding-type"] == "anndata"
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert list(f["X"].attrs["shape"]) == [600, 20_000]
        assert f["X/indptr"].dtype == f["X/indices"].dtype == np.int32
        assert f["X/indptr"][-1] == f["X/data"].shape[0]


@pytest.mark.parametrize("layout", ["csc", "dense"])
def test_layout_variants_hold_the_same_counts(tmp_path: Path, layout: str) -> None:
    ref = ad.read_h5ad(write_sample(tmp_path / "csr.h5ad", cells=120, genes=2000, seed=1))
    other = ad.read_h5ad(write_sample(tmp_path / f"{layout}.h5ad", cells=120, genes=2000, seed=1, layout=layout))
    if layout == "csc":
        assert isinstance(other.X, sp.csc_matrix)
    else:
        assert isinstance(other.X, np.ndarray)
    np.testing.assert_array_equal(sp.csr_matrix(other.X).toarray(), ref.X.toarray())


@pytest.mark.parametrize("counts_in", ["layers", "raw"])
def test_counts_in_layers_or_raw(tmp_path: Path, counts_in: str) -> None:
    ref = ad.read_h5ad(write_sample(tmp_path / "x.h5ad", cells=100, genes=1500, seed=2))
    adata = ad.read_h5ad(write_sample(tmp_path / "v.h5ad", cells=100, genes=1500, seed=2, counts_in=counts_in))
    counts = adata.layers["counts"] if counts_in == "layers" else adata.raw.X
    np.testing.assert_array_equal(counts.toarray(), ref.X.toarray())
    assert not np.allclose(adata.X.data, np.round(adata.X.data))  # X holds normalised values


@pytest.mark.parametrize("var_ids", ["ensembl_id", "gene_ids"])
def test_gene_ids_in_a_var_column(tmp_path: Path, var_ids: str) -> None:
    adata = ad.read_h5ad(write_sample(tmp_path / "v.h5ad", cells=50, genes=1000, var_ids=var_ids))
    assert adata.var[var_ids].str.match(r"^ENSG\d{11}$").all()
    assert not adata.var_names.str.startswith("ENSG").any()


def test_integer_obs_index(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "i.h5ad", cells=40, genes=500, obs_index="integer")
    with h5py.File(path) as f:
        assert f["obs/_index"].dtype.kind == "i"
    assert ad.read_h5ad(path).n_obs == 40


def test_rejects_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout='coo'"):
        write_sample(tmp_path / "x.h5ad", cells=10, genes=100, layout="coo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="genes=40000"):
        write_sample(tmp_path / "x.h5ad", cells=10, genes=40_000)


def test_cli_writes_a_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.h5ad"
    assert main(["sample", str(out), "--cells", "80", "--genes", "1200", "--seed", "4"]) == 0
    assert str(out) in capsys.readouterr().out
    assert ad.read_h5ad(out).shape == (80, 1200)
    assert main(["sample", str(out), "--layout", "coo"]) != 0


def test_cli_refuses_a_missing_folder_unless_parents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "such"
    capsys.readouterr()
    assert main(["sample", str(missing / "x.h5ad"), "--cells", "20", "--genes", "300"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sclake: error: folder ") and "--parents" in err
    assert str(missing) in err
    assert not (tmp_path / "no").exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["sample", str(a_file / "x.h5ad"), "--cells", "20", "--genes", "300"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    out = missing / "x.h5ad"
    assert main(["sample", str(out), "--cells", "20", "--genes", "300", "--parents"]) == 0
    assert ad.read_h5ad(out).shape == (20, 300)


def test_write_sample_without_parents_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_sample(tmp_path / "none" / "x.h5ad", cells=5, genes=100, parents=False)
    assert not (tmp_path / "none").exists()


def test_a_batch_draws_new_cells_from_the_same_tissue(tmp_path: Path) -> None:
    """``--batch``: the same genes and cell-type programs, other cells; batch 0 is the default sample."""
    a = write_sample(tmp_path / "a.h5ad", cells=400, genes=500, seed=3)
    assert write_sample(tmp_path / "a0.h5ad", cells=400, genes=500, seed=3, batch=0).read_bytes() == a.read_bytes()
    b = ad.read_h5ad(write_sample(tmp_path / "b.h5ad", cells=400, genes=500, seed=3, batch=1))
    a = ad.read_h5ad(a)
    assert list(a.var_names) == list(b.var_names)
    assert set(b.obs["cell_type"].cat.categories) == set(a.obs["cell_type"].cat.categories)
    assert (a.X != b.X).nnz > 0 and not np.array_equal(a.obs["cell_type"].to_numpy(), b.obs["cell_type"].to_numpy())

    # The same programs: per cell type, mean expression profiles of the two batches agree far
    # better than those of different types.
    def profile(x, mask):
        m = np.asarray(x[mask].mean(axis=0)).ravel()
        return np.log1p(m / m.sum() * 1e4)

    kinds = [t for t in a.obs["cell_type"].cat.categories if (a.obs["cell_type"] == t).sum() >= 20]
    kinds = [t for t in kinds if (b.obs["cell_type"] == t).sum() >= 20][:2]
    same = np.corrcoef(profile(a.X, (a.obs["cell_type"] == kinds[0]).to_numpy()),
                       profile(b.X, (b.obs["cell_type"] == kinds[0]).to_numpy()))[0, 1]  # fmt: skip
    other = np.corrcoef(profile(a.X, (a.obs["cell_type"] == kinds[0]).to_numpy()),
                        profile(b.X, (b.obs["cell_type"] == kinds[1]).to_numpy()))[0, 1]  # fmt: skip
    assert same > other
    with pytest.raises(ValueError, match="batch=-1"):
        write_sample(tmp_path / "c.h5ad", cells=10, genes=100, batch=-1)
