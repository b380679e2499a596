"""The bad-input corpus: uploads users really send, each with the outcome the pipeline must reach.

Every case is built from a synthetic raw-count sample written by the production writer
(:func:`pipelines.sample.write_sample`) and then broken the way real files are broken,
except ``scaled_negative``, which is scanpy's own ``10x_pbmc68k_reduced.h5ad`` (a real
processed file: X scaled with negative values, raw.X log-normalised, gene symbols).

``Case.outcome`` is ``pass``, ``pass_with_warnings`` or ``quarantined``; a quarantined case
names the stage that refuses it (``ingest`` or ``validate``), its ``code`` and words its
reason must contain.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from pipelines.sample import write_sample

CELLS, GENES = 120, 400
PBMC68K = "10x_pbmc68k_reduced.h5ad"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], None]
    outcome: str  # pass | pass_with_warnings | quarantined
    stage: str | None = None  # ingest | validate
    code: str | None = None
    reason_has: tuple[str, ...] = ()
    description: str = ""

    @property
    def valid(self) -> bool:
        return self.outcome != "quarantined"


# -- helpers --------------------------------------------------------------------------------------


def _adata(path: Path, seed: int = 0, cells: int = CELLS, genes: int = GENES, **kwargs):
    """A sample read back into memory (small), to be broken and written again."""
    import anndata as ad

    tmp = path.with_suffix(".base.h5ad")
    write_sample(tmp, cells=cells, genes=genes, seed=seed, **kwargs)
    adata = ad.read_h5ad(tmp)
    tmp.unlink()
    return adata


def _lognorm(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``log1p(counts / total * 1e4)``, as ``sc.pp.normalize_total`` + ``sc.pp.log1p`` give."""
    x = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    totals = np.maximum(np.add.reduceat(x.data, x.indptr[:-1]) if x.nnz else np.zeros(x.shape[0]), 1)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    x.data = np.log1p(x.data / totals[rows] * 1e4)
    return sp.csr_matrix(x, dtype=np.float32)


def scanpy_pbmc68k() -> Path | None:
    """Path of ``10x_pbmc68k_reduced.h5ad`` shipped inside the scanpy wheel (scanpy is not imported)."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / PBMC68K
    return path if path.is_file() else None


# -- builders -------------------------------------------------------------------------------------


def float_whole_counts(path: Path) -> None:
    write_sample(path, cells=CELLS, genes=GENES, seed=1)  # X: float32 holding integers


def integer_counts(path: Path) -> None:
    a = _adata(path, seed=2)
    a.X = sp.csr_matrix(a.X, dtype=np.int32)
    a.write_h5ad(path)


def counts_in_layers(path: Path) -> None:
    write_sample(path, cells=CELLS, genes=GENES, seed=3, counts_in="layers")


def counts_in_raw(path: Path) -> None:
    write_sample(path, cells=CELLS, genes=GENES, seed=4, counts_in="raw")


def ensembl_in_column(path: Path) -> None:
    write_sample(path, cells=CELLS, genes=GENES, seed=5, var_ids="gene_ids")


def few_empty_cells(path: Path) -> None:
    a = _adata(path, seed=6)
    x = a.X.tolil()
    for i in (3, 50, 97):
        x[i, :] = 0
    a.X = sp.csr_matrix(x)
    a.X.eliminate_zeros()
    a.write_h5ad(path)


def not_hdf5(path: Path) -> None:
    path.write_bytes(b"cell_id,ENSG00000141510\nAAAC-1,3\n" * 40)


def truncated(path: Path) -> None:
    write_sample(path, cells=CELLS, genes=GENES, seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def zero_cells(path: Path) -> None:
    a = _adata(path, seed=8)
    a[:0].copy().write_h5ad(path)


def zero_genes(path: Path) -> None:
    a = _adata(path, seed=9)
    a[:, :0].copy().write_h5ad(path)


def lognorm_no_counts(path: Path) -> None:
    a = _adata(path, seed=10)
    a.X = _lognorm(sp.csr_matrix(a.X))
    a.write_h5ad(path)


def scaled_negative(path: Path) -> None:
    src = scanpy_pbmc68k()
    if src is None:  # scanpy absent: an equivalent file (X scaled, raw.X log-normalised, symbols)
        a = _adata(path, seed=11, var_ids="gene_ids")
        del a.var["gene_ids"]
        a.raw = a.copy()
        a.raw.X.data = np.log1p(a.raw.X.data)
        dense = _lognorm(sp.csr_matrix(a.X)).toarray()
        a.X = ((dense - dense.mean(0)) / (dense.std(0) + 1e-6)).astype(np.float32)
        a.write_h5ad(path)
        return
    path.write_bytes(src.read_bytes())


def gene_symbols(path: Path) -> None:
    a = _adata(path, seed=12, var_ids="gene_ids")
    del a.var["gene_ids"]  # symbols in the index, no Ensembl ids anywhere
    a.write_h5ad(path)


def no_vocabulary_genes(path: Path) -> None:
    a = _adata(path, seed=13)
    # Ensembl-shaped ids that no model vocabulary holds (beyond the synthetic gene universe).
    a.var_names = [f"ENSG{900_000 + i:011d}" for i in range(a.n_vars)]
    a.write_h5ad(path)


def duplicate_cell_ids(path: Path) -> None:
    a = _adata(path, seed=14)
    names = list(a.obs_names)
    names[10:20] = names[:10]
    a.obs_names = names
    a.write_h5ad(path)


def nan_inf(path: Path) -> None:
    a = _adata(path, seed=15)
    x = sp.csr_matrix(a.X, dtype=np.float32)
    x.data[5] = np.nan
    x.data[17] = np.inf
    a.X = x
    a.write_h5ad(path)


def nan_beyond_sample(path: Path) -> None:
    """~250k stored values and one NaN between the windows ingest samples (start, middle, end).

    Ingest checks a sample of the values before converting; validation then sees them all.
    """
    from pipelines.ingest.source import SAMPLE_VALUES

    write_sample(path, cells=400, genes=3000, seed=16)
    with h5py.File(path, "r+") as f:
        data = f["X/data"]
        n = data.shape[0]
        lo, hi = SAMPLE_VALUES, n // 2 - SAMPLE_VALUES // 2  # after the first window, before the middle one
        if hi <= lo:
            raise ValueError(f"{n} stored values leave no room outside ingest's sample windows")
        data[(lo + hi) // 2] = np.nan


def mostly_empty_cells(path: Path) -> None:
    a = _adata(path, seed=17)
    x = a.X.tolil()
    for i in range(0, a.n_obs, 4):  # keep every fourth cell
        for j in range(1, 4):
            if i + j < a.n_obs:
                x[i + j, :] = 0
    a.X = sp.csr_matrix(x)
    a.X.eliminate_zeros()
    a.write_h5ad(path)


# -- the corpus -----------------------------------------------------------------------------------

CASES: tuple[Case, ...] = (
    Case("float_whole_counts", float_whole_counts, "pass", description="float32 X holding whole numbers"),
    Case("integer_counts", integer_counts, "pass", description="int32 X"),
    Case("counts_in_layers", counts_in_layers, "pass", description="X log-normalised, counts in layers['counts']"),
    Case("counts_in_raw", counts_in_raw, "pass", description="X log-normalised, counts in raw.X"),
    Case("ensembl_in_column", ensembl_in_column, "pass", description="symbols as index, Ensembl ids in var"),
    Case("few_empty_cells", few_empty_cells, "pass_with_warnings", description="3 of 120 cells without counts"),
    Case("not_hdf5", not_hdf5, "quarantined", "ingest", "not_hdf5", ("not an HDF5",), "a CSV named .h5ad"),
    Case("truncated", truncated, "quarantined", "ingest", "truncated", ("truncated",), "first half of an .h5ad"),
    Case("empty_file", empty_file, "quarantined", "ingest", "not_hdf5", ("HDF5",), "0 bytes"),
    Case("zero_cells", zero_cells, "quarantined", "validate", "no_cells", ("no cells",), "0 x 400"),
    Case("zero_genes", zero_genes, "quarantined", "validate", "no_genes", ("no genes",), "120 x 0"),
    Case(
        "lognorm_no_counts",
        lognorm_no_counts,
        "quarantined",
        "ingest",
        "no_raw_counts",
        ("non-integer",),
        "X log-normalised, no counts anywhere",
    ),
    Case(
        "scaled_negative",
        scaled_negative,
        "quarantined",
        "ingest",
        "no_raw_counts",
        ("negative",),
        "scanpy's 10x_pbmc68k_reduced.h5ad: X scaled, raw.X log-normalised",
    ),
    Case(
        "gene_symbols",
        gene_symbols,
        "quarantined",
        "validate",
        "not_ensembl_ids",
        ("Ensembl",),
        "gene symbols, no Ensembl ids",
    ),
    Case(
        "no_vocabulary_genes",
        no_vocabulary_genes,
        "quarantined",
        "validate",
        "genes_not_in_vocabulary",
        ("vocabulary",),
        "Ensembl-shaped ids outside the model's vocabulary",
    ),
    Case(
        "duplicate_cell_ids",
        duplicate_cell_ids,
        "quarantined",
        "validate",
        "duplicate_cell_ids",
        ("share their id",),
        "10 cell ids used twice",
    ),
    Case("nan_inf", nan_inf, "quarantined", "ingest", "no_raw_counts", ("non-finite",), "a NaN and an inf in X"),
    Case(
        "nan_beyond_sample",
        nan_beyond_sample,
        "quarantined",
        "validate",
        "non_finite_values",
        ("NaN",),
        "one NaN among ~500k values, away from the start, middle and end",
    ),
    Case(
        "mostly_empty_cells",
        mostly_empty_cells,
        "quarantined",
        "validate",
        "mostly_empty_cells",
        ("no counts",),
        "three cells in four without counts",
    ),
)


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every case to ``folder/<name>.h5ad``; returns the paths by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in CASES:
        path = folder / f"{case.name}.h5ad"
        case.build(path)
        out[case.name] = path
    return out


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)
