"""Realistic synthetic raw-count ``.h5ad`` files, written in row blocks (bounded memory).

The generative model, per cell ``c`` of cell type ``k`` from donor ``d``:

* a library size ``L_c`` drawn log-normally (median ``median_umis``, donors shift it);
* an expression program ``p[k, d]`` over genes: a heavy-tailed baseline shared by all
  cells, each cell type up-weighting its own marker genes (and a mild log-normal tilt of
  every gene), each donor a small multiplicative effect;
* counts ``x[c, g] ~ NB(mean = L_c * p[k, d, g], dispersion phi_g)``.

Sampling is sparse so that a million cells stay cheap: genes whose expected count is
non-negligible are drawn densely as gamma-Poisson (negative binomial); the long tail of
rarely seen genes (expected count below ~0.05, where NB and Poisson coincide) is drawn as
independent Poissons through their sum and a multinomial split, which costs one draw per
observed count instead of one per gene.

On disk: the anndata ``.h5ad`` layout, X a CSR matrix of ``float32`` values holding
integers (as most public raw-count files store them), ``indices`` and ``indptr`` int32
(both int64 beyond 2**31 stored values). The default CSR/``X`` file is written block by block into resizable HDF5
datasets, so memory stays flat whatever the number of cells. Variants for tests (CSC or
dense X, counts in ``layers["counts"]`` or ``raw.X``, gene ids in a var column, integer
obs index) are built in memory and meant for small files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.h5ad_writer import StreamingH5adWriter
from pipelines.logs import Progress, get_logger
from pipelines.models.vocabulary import gene_universe, vocabulary_genes

log = get_logger(__name__)

Layout = Literal["csr", "csc", "dense"]
CountsIn = Literal["X", "layers", "raw"]
VarIds = Literal["index", "ensembl_id", "gene_ids"]

LAYOUTS = ("csr", "csc", "dense")
COUNTS_IN = ("X", "layers", "raw")
VAR_IDS = ("index", "ensembl_id", "gene_ids")
CELL_TYPES = (
    "CD4 T cell",
    "CD8 T cell",
    "B cell",
    "NK cell",
    "classical monocyte",
    "dendritic cell",
    "platelet",
    "plasma cell",
)
MITO_SYMBOLS = tuple(
    f"MT-{s}" for s in ("ND1", "ND2", "CO1", "CO2", "ATP8", "ATP6", "CO3", "ND3", "ND4L", "ND4", "ND5", "ND6", "CYB")
)
OUTSIDE_SHARE = 0.10  # share of genes outside every model vocabulary
DENSE_THRESHOLD = 2.0  # expected count above which a gene is drawn per (cell, gene); a speed knob only
BLOCK_CELLS = 2048
COMPRESSION: dict[str, object] = {"compression": "gzip", "compression_opts": 1}


@dataclass(frozen=True)
class SampleModel:
    """The fixed parameters of one synthetic dataset (genes, programs, donors)."""

    gene_ids: np.ndarray  # Ensembl ids, universe order
    symbols: np.ndarray
    programs: np.ndarray  # (n_types * n_donors, n_genes) float64, rows sum to 1
    dispersion: np.ndarray  # (n_genes,) NB dispersion phi
    donor_scale: np.ndarray  # (n_donors,) library-size factor
    type_weights: np.ndarray  # (n_types,) abundance of each cell type
    n_types: int
    n_donors: int
    median_umis: float
    umi_sigma: float


def pick_genes(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """``n_genes`` Ensembl ids from the shared universe, ~10% outside the v1/v2 vocabularies."""
    universe = np.asarray(gene_universe())
    vocab = set(vocabulary_genes("v1")) | set(vocabulary_genes("v2"))
    inside = np.flatnonzero([g in vocab for g in universe])
    outside = np.setdiff1d(np.arange(len(universe)), inside)
    if not 1 <= n_genes <= len(universe):
        raise ValueError(f"genes={n_genes!r} must be between 1 and {len(universe)} (the synthetic gene universe)")
    n_out = min(int(round(OUTSIDE_SHARE * n_genes)), len(outside))
    n_in = n_genes - n_out
    if n_in > len(inside):
        n_in, n_out = len(inside), n_genes - len(inside)
    chosen = np.concatenate([rng.choice(inside, n_in, replace=False), rng.choice(outside, n_out, replace=False)])
    return universe[np.sort(chosen)]


def build_model(
    n_genes: int,
    rng: np.random.Generator,
    *,
    n_types: int = len(CELL_TYPES),
    n_donors: int = 4,
    median_umis: float = 4000.0,
    umi_sigma: float = 0.45,
) -> SampleModel:
    """Draw the dataset-level parameters: baseline expression, markers, donor effects."""
    gene_ids = pick_genes(n_genes, rng)
    symbols = np.array([f"SYN{gid[4:].lstrip('0') or '0'}" for gid in gene_ids], dtype=object)
    # A heavy-tailed baseline: a few hundred genes carry most reads, most genes are rare.
    base = rng.lognormal(mean=0.0, sigma=2.1, size=n_genes)
    mito = rng.choice(n_genes, size=min(len(MITO_SYMBOLS), n_genes), replace=False)
    symbols[mito] = MITO_SYMBOLS[: len(mito)]
    base[mito] = np.quantile(base, 0.999) * rng.uniform(0.5, 2.0, size=len(mito))
    programs = np.empty((n_types * n_donors, n_genes))
    n_markers = max(1, min(150, n_genes // 50))
    donor_effects = rng.lognormal(0.0, 0.15, size=(n_donors, n_genes))
    for k in range(n_types):
        tilt = rng.lognormal(0.0, 0.35, size=n_genes)
        # Markers among the better-expressed half of genes, up-weighted 5-30x in this type.
        markers = rng.choice(np.flatnonzero(base >= np.median(base)), size=n_markers, replace=False)
        tilt[markers] *= rng.uniform(5.0, 30.0, size=n_markers)
        for d in range(n_donors):
            p = base * tilt * donor_effects[d]
            programs[k * n_donors + d] = p / p.sum()
    return SampleModel(
        gene_ids=gene_ids,
        symbols=symbols,
        programs=programs,
        dispersion=rng.uniform(0.05, 0.6, size=n_genes),
        donor_scale=rng.lognormal(0.0, 0.2, size=n_donors),
        type_weights=rng.dirichlet(np.full(n_types, 3.0)),
        n_types=n_types,
        n_donors=n_donors,
        median_umis=median_umis,
        umi_sigma=umi_sigma,
    )


def draw_obs(model: SampleModel, n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cell-type and donor codes of every cell (small: two int8 arrays)."""
    types = rng.choice(model.n_types, size=n_cells, p=model.type_weights).astype(np.int8)
    donors = rng.integers(0, model.n_donors, size=n_cells).astype(np.int8)
    return types, donors


def draw_block(model: SampleModel, types: np.ndarray, donors: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Counts of one block of cells as a CSR matrix (float32 holding integers, sorted indices)."""
    n_cells, n_genes = len(types), model.programs.shape[1]
    lib = model.median_umis * model.donor_scale[donors] * rng.lognormal(0.0, model.umi_sigma, size=n_cells)
    size = 1.0 / model.dispersion  # NB size r
    groups = types.astype(np.int64) * model.n_donors + donors
    rows, cols, vals = [], [], []
    for grp in np.unique(groups):
        cells = np.flatnonzero(groups == grp)
        p = model.programs[grp]
        lam_max = p * lib[cells].max()
        dense = np.flatnonzero(lam_max > DENSE_THRESHOLD)
        tail = np.flatnonzero(lam_max <= DENSE_THRESHOLD)
        # Highly expressed genes: gamma-Poisson (negative binomial) per (cell, gene).
        r_dense = size[dense]
        gamma = rng.standard_gamma(np.broadcast_to(r_dense, (len(cells), len(dense))))
        x = rng.poisson(gamma * (lib[cells, None] * (p[dense] / r_dense)[None, :]))
        r, c = np.nonzero(x)
        rows.append(cells[r])
        cols.append(dense[c])
        vals.append(x[r, c])
        if len(tail):
            cell, gene, counts = _draw_tail(lib[cells], p[tail], size[tail], rng)
            rows.append(cells[cell])
            cols.append(tail[gene])
            vals.append(counts)
    row = np.concatenate(rows)
    counts = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (row, np.concatenate(cols).astype(np.int32))),
        shape=(n_cells, n_genes),
    )
    counts.sort_indices()
    return counts


def _sorted_uniforms(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n[i]`` uniforms for each segment ``i``, ascending within each segment (no sort needed).

    The order statistics of ``k`` uniforms are the normalised partial sums of ``k + 1``
    exponential spacings.
    """
    seg = n + 1
    e = rng.standard_exponential(int(seg.sum()))
    cs = np.cumsum(e)
    end = np.cumsum(seg) - 1
    before = np.concatenate([[0.0], cs[end[:-1]]])
    total = cs[end] - before
    owner = np.repeat(np.arange(len(n)), seg)
    u = (cs - before[owner]) / total[owner]
    last = np.zeros(len(e), dtype=bool)
    last[end] = True
    return u[~last]


def _draw_tail(
    lib: np.ndarray, p: np.ndarray, r: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact negative-binomial counts of rarely seen genes, at a cost per observed count.

    NB(mean lam, size r) is a compound Poisson: ``Poisson(r*log(1+lam/r))`` events, each
    adding a ``Logarithmic(lam/(r+lam))`` count. Events are proposed at rate ``lam`` (a
    Poisson total per cell split multinomially over genes, through sorted uniforms so
    that events come out ordered by (cell, gene)) and kept with probability
    ``r*log(1+lam/r)/lam`` (thinning). Returns (cell, gene, count) of the non-zero entries.
    """
    n_prop = rng.poisson(lib * p.sum())
    cdf = np.cumsum(p)
    u = _sorted_uniforms(n_prop, rng)
    gene = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(p) - 1)
    cell = np.repeat(np.arange(len(lib)), n_prop)
    lam = lib[cell] * p[gene]
    rg = r[gene]
    keep = rng.uniform(size=len(lam)) * lam < rg * np.log1p(lam / rg)
    cell, gene, lam, rg = cell[keep], gene[keep], lam[keep], rg[keep]
    counts = rng.logseries(lam / (rg + lam))
    key = cell * len(p) + gene  # ascending: events are ordered by (cell, gene)
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.zeros(0, np.int64)
    summed = np.add.reduceat(counts, starts) if len(key) else np.zeros(0, np.int64)
    return cell[starts], gene[starts], summed


def cell_names(n_cells: int) -> pd.Index:
    width = max(6, len(str(n_cells)))
    return pd.Index([f"cell-{i:0{width}d}" for i in range(1, n_cells + 1)], name=None)


def make_obs(model: SampleModel, types: np.ndarray, donors: np.ndarray) -> pd.DataFrame:
    donor_names = [f"donor-{d + 1}" for d in range(model.n_donors)]
    batch_of_donor = [f"batch-{d // 2 + 1}" for d in range(model.n_donors)]
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, categories=list(CELL_TYPES[: model.n_types])),
            "donor": pd.Categorical.from_codes(donors, categories=donor_names),
            "batch": pd.Categorical.from_codes(
                np.asarray(donors) // 2, categories=sorted(set(batch_of_donor), key=batch_of_donor.index)
            ),
        },
        index=cell_names(len(types)),
    )


def make_var(model: SampleModel, var_ids: VarIds) -> pd.DataFrame:
    ids = pd.Index(model.gene_ids.astype(str), dtype=object)
    if var_ids == "index":
        return pd.DataFrame({"gene_symbol": model.symbols.astype(str)}, index=ids)
    # Gene symbols as the index (as many public files have), Ensembl ids in a column.
    return pd.DataFrame({var_ids: np.asarray(ids)}, index=pd.Index(model.symbols.astype(str), dtype=object))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def write_sample(
    path: str | Path,
    cells: int = 2000,
    genes: int = 20_000,
    seed: int = 0,
    *,
    batch: int = 0,
    layout: Layout = "csr",
    counts_in: CountsIn = "X",
    var_ids: VarIds = "index",
    obs_index: Literal["names", "integer"] = "names",
    block_cells: int = BLOCK_CELLS,
    compression: bool = False,
    parents: bool = True,
) -> Path:
    """Write a synthetic raw-count ``.h5ad`` and return its path.

    Parameters
    ----------
    path
        Output file (overwritten).
    cells, genes
        Shape of the count matrix. ``genes`` is at most 30,000 (the synthetic universe).
    seed
        The same arguments and seed give the same bytes.
    batch
        Another batch of cells from the same tissue: the seed fixes the genes and the
        cell-type programs, the batch draws new cells (types, donors, counts) from them.
        Batch 0 is the default sample; e.g. a reference is batch 0 and a query batch 1.
    layout
        ``"csr"`` (default, streamed in row blocks: any number of cells in bounded
        memory), ``"csc"`` or ``"dense"`` (built in memory: small files only).
    counts_in
        Where the raw counts go: ``"X"`` (default), ``"layers"`` (``layers["counts"]``,
        X holding log-normalised values) or ``"raw"`` (``raw.X``, X log-normalised).
    var_ids
        ``"index"``: Ensembl ids are the var index (plus a ``gene_symbol`` column);
        ``"ensembl_id"`` / ``"gene_ids"``: symbols are the index, ids in that column.
    obs_index
        ``"names"`` (``cell-000001``…) or ``"integer"`` (an integer ``_index``, as some
        writers other than anndata produce).
    block_cells
        Rows generated and written at a time by the streamed writer.
    compression
        gzip level 1 on the streamed count arrays (default: none, as ``write_h5ad``).
    parents
        Create the output's missing parent folders (default); with ``False`` a missing
        folder raises ``FileNotFoundError`` naming it.
    """
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("counts_in", counts_in, COUNTS_IN)
    _check_choice("var_ids", var_ids, VAR_IDS)
    _check_choice("obs_index", obs_index, ("names", "integer"))
    if cells < 1:
        raise ValueError(f"cells={cells!r} must be >= 1")
    if batch < 0:
        raise ValueError(f"batch={batch!r} must be >= 0")
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    model = build_model(genes, rng)
    if batch:  # new cells from the same programs (batch 0 draws them from the model's stream)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, batch]))
    types, donors = draw_obs(model, cells, rng)
    obs, var = make_obs(model, types, donors), make_var(model, var_ids)
    progress = Progress(f"sample {path.name}", total=cells, unit="cells")

    def blocks():
        for b, start in enumerate(range(0, cells, block_cells)):
            stop = min(start + block_cells, cells)
            key = [seed, 1, b] if not batch else [seed, 3, batch, b]  # batch 0 keeps the default sample's bytes
            block_rng = np.random.default_rng(np.random.SeedSequence(key))
            yield draw_block(model, types[start:stop], donors[start:stop], block_rng)
            progress.advance(stop - start)

    if layout == "csr" and counts_in == "X" and obs_index == "names":
        with StreamingH5adWriter(path, obs, var, compression=COMPRESSION if compression else {}) as writer:
            for block in blocks():
                writer.append(block)
    else:
        _write_in_memory(path, sp.vstack(list(blocks()), format="csr"), obs, var, layout, counts_in, obs_index)
    progress.finish()
    return path


def _write_in_memory(
    path: Path,
    counts: sp.csr_matrix,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    layout: Layout,
    counts_in: CountsIn,
    obs_index: str,
) -> None:
    import anndata as ad
    from anndata.io import write_elem

    def shaped(m: sp.csr_matrix):
        if layout == "csc":
            return m.tocsc()
        if layout == "dense":
            return m.toarray()
        return m

    lognorm = counts.multiply(1e4 / np.maximum(counts.sum(axis=1), 1)).tocsr()
    lognorm.data = np.log1p(lognorm.data).astype(np.float32)
    if counts_in == "X":
        adata = ad.AnnData(X=shaped(counts), obs=obs, var=var)
    elif counts_in == "layers":
        adata = ad.AnnData(X=shaped(lognorm), obs=obs, var=var, layers={"counts": shaped(counts)})
    else:
        adata = ad.AnnData(X=shaped(counts), obs=obs, var=var)
        adata.raw = adata
        adata.X = shaped(lognorm)
    adata.write_h5ad(path)
    if obs_index == "integer":
        # Rewrite obs with an integer index, as some non-anndata writers store it.
        int_obs = obs.reset_index(drop=True)
        with h5py.File(path, "r+") as f:
            del f["obs"]
            write_elem(f, "obs", int_obs)
