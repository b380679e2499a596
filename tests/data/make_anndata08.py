"""Write ``anndata08.h5ad``: a small raw-count file written by anndata 0.8.0.

Files written years ago by anndata 0.8 are still uploaded; ``tests/test_anndata08.py``
ingests this one and the same matrix/obs/var written by today's anndata and checks that the
lake ends up with identical counts, obs, var, tokens and embeddings.

It runs in a throwaway environment with the old releases (the project's own environment has
today's anndata), from the repository root::

    uv venv /tmp/ad08 --python 3.11
    uv pip install --python /tmp/ad08 'anndata==0.8.0' 'numpy<1.24' 'pandas<2' 'h5py<3.9' 'scipy<1.11'
    /tmp/ad08/bin/python tests/data/make_anndata08.py

(anndata 0.8.0, numpy 1.23.5, pandas 1.5.3, h5py 3.8.0, scipy 1.10.1 wrote the committed file.)
The genes are Ensembl ids of the synthetic gene universe that ``sclake models synthesize`` and
``sclake sample`` share, most inside the Geneformer vocabularies and a tenth outside, so the
tiny synthesized model tokenises them as it would a real upload.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
OUT = HERE / "anndata08.h5ad"
CELLS, GENES, OUTSIDE = 96, 200, 20
SEED = 8


def vocabulary_module():
    """``pipelines/models/vocabulary.py`` loaded by path (it needs only numpy; the package needs more)."""
    path = HERE.parents[1] / "pipelines" / "models" / "vocabulary.py"
    spec = importlib.util.spec_from_file_location("sclake_vocabulary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    if ad.__version__ != "0.8.0":
        raise SystemExit(f"this fixture must be written by anndata 0.8.0, not {ad.__version__}")
    vocab = vocabulary_module()
    rng = np.random.default_rng(SEED)
    universe = np.asarray(vocab.gene_universe())
    inside = set(vocab.vocabulary_genes("v1")) & set(vocab.vocabulary_genes("v2"))
    in_ids = np.array([g for g in universe if g in inside])
    out_ids = np.array([g for g in universe if g not in inside])
    genes = np.sort(
        np.concatenate(
            [rng.choice(in_ids, GENES - OUTSIDE, replace=False), rng.choice(out_ids, OUTSIDE, replace=False)]
        )
    )

    # Counts: a heavy-tailed gene baseline, two cell types with their own markers, log-normal library sizes.
    base = rng.lognormal(0.0, 1.8, size=GENES)
    types = rng.integers(0, 2, size=CELLS)
    markers = rng.choice(GENES, size=(2, 20), replace=False)
    programs = np.tile(base, (2, 1))
    for k in range(2):
        programs[k, markers[k]] *= 15.0
    programs /= programs.sum(1, keepdims=True)
    library = rng.lognormal(np.log(600.0), 0.4, size=CELLS)
    counts = rng.poisson(library[:, None] * programs[types]).astype(np.float32)
    x = sp.csr_matrix(counts)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, categories=["B cell", "CD4 T cell"]),
            "donor": pd.Categorical([f"donor-{i % 3 + 1}" for i in range(CELLS)]),
            "n_counts": counts.sum(1).astype(np.float32),
            "n_genes": (counts > 0).sum(1).astype(np.int64),
            "barcode": [f"AAACCTGAGC{i:04d}-1" for i in range(CELLS)],
        },
        index=pd.Index([f"cell-{i:03d}" for i in range(1, CELLS + 1)]),
    )
    var = pd.DataFrame({"gene_symbol": [f"SYN{g[4:].lstrip('0')}" for g in genes]}, index=pd.Index(genes))
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(OUT, compression="gzip")
    print(f"{OUT}: {CELLS} cells x {GENES} genes, {x.nnz} stored counts, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
