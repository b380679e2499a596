"""The synthetic gene universe shared by synthesized model files and sample data.

Real Geneformer vocabularies are sets of human Ensembl gene ids. Synthetic model files
(``sclake models synthesize``) and synthetic samples (``sclake sample``) draw their ids
from one deterministic universe so that a sample overlaps the model vocabulary the way a
real dataset does (most genes inside, a share outside).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

UNIVERSE_SIZE = 30_000
# Genes per vocabulary (special tokens excluded): 25,426 tokens in v1, 20,275 in v2/v3.
VOCAB_GENES = {"v1": 25_424, "v2": 20_271, "v3": 20_271}
SPECIAL_TOKENS = {"v1": ("<pad>", "<mask>"), "v2": ("<pad>", "<mask>", "<cls>", "<eos>")}
SPECIAL_TOKENS["v3"] = SPECIAL_TOKENS["v2"]
_SEED = 20_240_611


def ensembl_id(n: int) -> str:
    """``ENSG`` followed by 11 digits, the shape of a human Ensembl gene id."""
    return f"ENSG{n:011d}"


@lru_cache(maxsize=1)
def gene_universe() -> tuple[str, ...]:
    """All synthetic gene ids, sorted (deterministic)."""
    rng = np.random.default_rng(_SEED)
    numbers = np.sort(rng.choice(np.arange(3, 300_000), size=UNIVERSE_SIZE, replace=False))
    return tuple(ensembl_id(int(n)) for n in numbers)


@lru_cache(maxsize=4)
def vocabulary_genes(version: str) -> tuple[str, ...]:
    """Gene ids in the vocabulary of model version ``v1``, ``v2`` or ``v3`` (universe order).

    v1 takes the first 25,424 genes of the universe; v2 and v3 take 20,271 genes that
    mostly overlap v1 (as the real dictionaries do), a few of them beyond v1's range.
    """
    if version not in VOCAB_GENES:
        raise ValueError(f"model version {version!r} is not one of {sorted(VOCAB_GENES)}")
    universe = gene_universe()
    if version == "v1":
        return universe[: VOCAB_GENES["v1"]]
    rng = np.random.default_rng(_SEED + 2)
    inside = rng.choice(VOCAB_GENES["v1"], size=VOCAB_GENES["v2"] - 500, replace=False)
    beyond = VOCAB_GENES["v1"] + rng.choice(UNIVERSE_SIZE - VOCAB_GENES["v1"], size=500, replace=False)
    picked = np.sort(np.concatenate([inside, beyond]))
    return tuple(universe[int(i)] for i in picked)


def token_dictionary(version: str) -> dict[str, int]:
    """Token ids as Geneformer numbers them: special tokens first, then genes."""
    tokens = list(SPECIAL_TOKENS[version]) + list(vocabulary_genes(version))
    return {tok: i for i, tok in enumerate(tokens)}
