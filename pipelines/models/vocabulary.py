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


# Alias ids in the Ensembl mapping dictionary (as retired or merged ids are in the real
# dictionaries): ids beyond the universe's range, so that samples drawn from the universe
# never hold one. Helical 2.2.0 cannot tokenize a dataset holding an alias together with
# its target (its collapse step drops the ``ensembl_id`` column and raises KeyError), and
# ignores an alias present without its target; tests that exercise the collapse add alias
# columns on purpose (:func:`gene_aliases`).
ALIASES_PER_VERSION = 2_000
_ALIAS_BASE = 300_000


@lru_cache(maxsize=1)
def _universe_medians() -> np.ndarray:
    """One non-zero median per universe gene (log-normal, deterministic)."""
    rng = np.random.default_rng(_SEED + 3)
    # Real Geneformer medians (normalised to 10,000 counts per cell) span ~0.1 to ~100,
    # most of them between 0.5 and 5.
    return np.clip(rng.lognormal(mean=np.log(1.4), sigma=0.9, size=UNIVERSE_SIZE), 0.05, 500.0)


def gene_medians(version: str) -> dict[str, float]:
    """Non-zero median expression of every vocabulary gene (positive, deterministic).

    A gene has the same median in every version whose vocabulary holds it.
    """
    index = {g: i for i, g in enumerate(gene_universe())}
    medians = _universe_medians()
    return {g: float(medians[index[g]]) for g in vocabulary_genes(version)}


@lru_cache(maxsize=4)
def _aliases(version: str) -> tuple[tuple[str, str], ...]:
    vocab = vocabulary_genes(version)
    rng = np.random.default_rng(_SEED + 4 + int(version[1:]))
    targets = rng.choice(len(vocab), size=ALIASES_PER_VERSION, replace=True)
    return tuple((ensembl_id(_ALIAS_BASE + i), vocab[int(t)]) for i, t in enumerate(targets))


def gene_aliases(version: str) -> dict[str, str]:
    """Alias ids (outside the universe) mapped onto vocabulary genes of ``version``; some targets have two."""
    return dict(_aliases(version))


def gene_mapping(version: str) -> dict[str, str]:
    """The Ensembl mapping dictionary: identity on the vocabulary plus :func:`gene_aliases`."""
    return {**{g: g for g in vocabulary_genes(version)}, **gene_aliases(version)}
