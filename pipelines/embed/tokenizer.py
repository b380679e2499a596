"""Geneformer's rank-value encoding, vectorised over CSR blocks (Helical 2.2.0 semantics).

A cell becomes the token ids of its expressed vocabulary genes, ordered by decreasing
normalised expression ``count / n_counts * 10,000 / gene_median``, truncated to the
model's input size, and framed by ``<cls>`` ... ``<eos>`` for models that use them (v2,
v3). The arithmetic repeats what Helical's ``TranscriptomeTokenizer.tokenize_anndata``
does with SciPy, operation for operation and in the same dtypes (a multiplication by the
reciprocal of the cell total, then by 10,000, then by the reciprocal of the median), so
the normalised values are bit-identical and so are the token sequences, except for the
order of genes with exactly equal values: Helical sorts each cell with NumPy's unstable
quicksort, this module keeps equal values in the order of the genes in ``var``.

Genes are matched as Helical does: when no two distinct ids of ``var`` map onto the same
vocabulary gene through the Ensembl mapping dictionary, a gene counts if its id is a key
of the token dictionary (ids are used as they are, aliases are ignored). Otherwise ids are
upper-cased, mapped, and the counts of genes that map onto the same vocabulary gene are
summed per cell (Geneformer's gene-id collapse; Helical 2.2.0 itself raises ``KeyError``
on such data). ``n_counts`` is the cell's total over every gene of ``var`` unless the
caller passes per-cell totals (Helical uses an ``n_counts`` obs column when present).

Only NumPy and SciPy are used: nothing here imports anndata, torch or Helical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

# Version of the token format and of the encoding rules; part of the vocabulary hash.
TOKENIZER_VERSION = "2"  # 2: counts float32 holds exactly are tokenised as float32
TARGET_SUM = 10_000
# Rows sorted together: a (rows x longest row) array of keys is built per group.
SORT_ROWS = 256


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """What a Geneformer model family tokenises with: its dictionaries, input size and framing.

    Attributes
    ----------
    token_dictionary : Mapping[str, int]
        Token ids by Ensembl id, special tokens (``<pad>``, ``<mask>`` [, ``<cls>``, ``<eos>``]) included.
    gene_medians : Mapping[str, float]
        Non-zero median expression per gene (the normalisation factors).
    gene_mapping : Mapping[str, str]
        Ensembl id or alias to the id it collapses onto.
    input_size : int
        The model's context length (Helical's ``model_input_size``).
    special_token : bool
        Frame cells with ``<cls>`` and ``<eos>`` (Helical's ``special_token``).
    """

    token_dictionary: Mapping[str, int]
    gene_medians: Mapping[str, float]
    gene_mapping: Mapping[str, str]
    input_size: int
    special_token: bool

    def __post_init__(self) -> None:
        if self.input_size < 3:
            raise ValueError(f"input_size {self.input_size!r} must be at least 3")
        for tok in ("<cls>", "<eos>") if self.special_token else ():
            if tok not in self.token_dictionary:
                raise ValueError(f"special_token=True needs {tok!r} in the token dictionary")

    @classmethod
    def from_model_files(cls, files) -> Vocabulary:
        """The vocabulary of a model in Helical's cache layout (a ``pipelines.models.ModelFiles``)."""
        from pipelines.models import load_gene_mapping, load_gene_medians, load_token_dictionary

        return cls(
            token_dictionary=load_token_dictionary(files),
            gene_medians=load_gene_medians(files),
            gene_mapping=load_gene_mapping(files),
            input_size=int(files.spec.input_size),
            special_token=bool(files.spec.special_token),
        )

    @property
    def pad_id(self) -> int:
        return int(self.token_dictionary["<pad>"])

    @property
    def cls_id(self) -> int | None:
        return int(self.token_dictionary["<cls>"]) if self.special_token else None

    @property
    def eos_id(self) -> int | None:
        return int(self.token_dictionary["<eos>"]) if self.special_token else None

    @property
    def max_genes(self) -> int:
        """Genes kept per cell: the input size, less two for ``<cls>``/``<eos>``."""
        return self.input_size - 2 if self.special_token else self.input_size

    @cached_property
    def hash(self) -> str:
        """First 16 hex digits of a SHA-256 over everything that decides the tokens.

        Models that share dictionaries, input size and framing (e.g. every v1 model) share
        the hash, and so reuse the stored tokens of a dataset.
        """
        h = hashlib.sha256()
        head = {"tokenizer": TOKENIZER_VERSION, "input_size": self.input_size, "special_token": self.special_token}
        h.update(json.dumps(head, sort_keys=True).encode())
        for name, d in (("tokens", self.token_dictionary), ("medians", self.gene_medians), ("map", self.gene_mapping)):
            h.update(f"\n[{name}]\n".encode())
            h.update("\n".join(f"{k}\t{d[k]!r}" for k in sorted(d, key=str)).encode())
        return h.hexdigest()[:16]

    @cached_property
    def _mapping_in_vocab(self) -> dict[str, str]:
        # Helical keeps only mapping entries whose target is a vocabulary token.
        return {k: v for k, v in self.gene_mapping.items() if v in self.token_dictionary}


@dataclass(frozen=True)
class GenePlan:
    """How the columns of one dataset's ``var`` become tokens (built once per dataset and vocabulary).

    Attributes
    ----------
    target : np.ndarray
        int32 per ``var`` column: index into :attr:`tokens` / :attr:`inv_median`, or -1 (not used).
    tokens : np.ndarray
        int32 token id per target gene.
    inv_median : np.ndarray
        ``1 / median`` per target gene, in the dtype Helical computes it in.
    collapse : bool
        Whether several columns map onto one target (their counts are summed per cell).
    """

    target: np.ndarray
    tokens: np.ndarray
    inv_median: np.ndarray
    collapse: bool

    @property
    def n_vars(self) -> int:
        return len(self.target)

    @property
    def n_genes(self) -> int:
        """Columns of ``var`` that contribute tokens."""
        return int((self.target >= 0).sum())


def plan_genes(gene_ids: Sequence[str], vocab: Vocabulary) -> GenePlan:
    """Match the Ensembl ids of a dataset's genes (``var`` order) to the vocabulary.

    Parameters
    ----------
    gene_ids : sequence of str
        One id per ``var`` column (``None``/NaN for genes without one).
    vocab : Vocabulary

    Returns
    -------
    GenePlan
    """
    ids = [g if isinstance(g, str) else None for g in gene_ids]
    mapping = vocab._mapping_in_vocab
    mapped_keys = [g for g in ids if g is not None and g in mapping]
    collapse = len(set(mapped_keys)) != len({mapping[g] for g in mapped_keys})
    if collapse:
        names = [mapping.get(g.upper()) if g is not None else None for g in ids]
    else:
        names = ids
    usable = [n is not None and n in vocab.token_dictionary and n in vocab.gene_medians for n in names]
    target = np.full(len(ids), -1, dtype=np.int32)
    order: dict[str, int] = {}
    if collapse:
        for j, (n, ok) in enumerate(zip(names, usable, strict=True)):
            if ok:
                target[j] = order.setdefault(n, len(order))
        genes = list(order)
    else:
        cols = [j for j, ok in enumerate(usable) if ok]
        target[cols] = np.arange(len(cols), dtype=np.int32)
        genes = [names[j] for j in cols]
    tokens = np.asarray([vocab.token_dictionary[g] for g in genes], dtype=np.int32)
    norm = np.array([vocab.gene_medians[g] for g in genes]) if genes else np.zeros(0)
    with np.errstate(divide="ignore"):
        inv_median = np.true_divide(1.0, norm)
    return GenePlan(target=target, tokens=tokens, inv_median=inv_median, collapse=collapse)


@dataclass(frozen=True)
class Tokens:
    """Token sequences of a block of cells: ``ids[offsets[i]:offsets[i+1]]`` is cell ``i``.

    ``lengths`` count every token of a cell, ``<cls>`` and ``<eos>`` included (Helical's ``length``).
    """

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, n_cells + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def cell(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> Tokens:
        """The cells ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lens = self.offsets[rows], np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        return Tokens(self.ids[index], offsets)


FLOAT32_EXACT_INTEGERS = 2**24  # every integer up to this is a float32


def counts_as_float32(x: sp.csr_matrix) -> sp.csr_matrix:
    """The block with float32 counts when that changes no value, else as it is.

    Helical computes in the stored dtype, so the same counts stored as int64 or float64
    normalise with other rounding than as float32 and can order near-equal genes
    differently (as can float16, whose sums overflow and round). Counts that float32 holds
    exactly (integers up to 2**24, floats that are float32 values) are therefore tokenised
    as float32, Helical's common case: the same count values give the same tokens whatever
    the dtype they were stored in.
    """
    data = x.data
    if data.dtype == np.float32 or data.dtype.kind not in "iuf":
        return x
    if data.dtype.kind in "iu":
        exact = data.size == 0 or (
            int(data.max()) <= FLOAT32_EXACT_INTEGERS and int(data.min()) >= -FLOAT32_EXACT_INTEGERS
        )
        as32 = data.astype(np.float32) if exact else None
    else:
        as32 = data.astype(np.float32)
        exact = data.dtype.itemsize < 4 or bool(np.array_equal(as32.astype(data.dtype), data, equal_nan=True))
    if not exact:
        return x
    return sp.csr_matrix((as32, x.indices, x.indptr), shape=x.shape)


def _row_sums(x: sp.csr_matrix) -> np.ndarray:
    # Exactly Helical's ``adata.X.sum(axis=1)``: SciPy picks the accumulator dtype.
    return np.asarray(x.sum(axis=1)).ravel()


def normalised_values(
    x: sp.csr_matrix, plan: GenePlan, n_counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell normalised expression of the vocabulary genes of a CSR block.

    Returns
    -------
    rows, targets, values : np.ndarray
        One entry per (cell, target gene) with a non-zero count, ordered by cell and then
        by ``var`` column (first column of the target when collapsed).
    """
    if x.shape[1] != plan.n_vars:
        raise ValueError(f"the block has {x.shape[1]} genes but the gene plan was built for {plan.n_vars}")
    if not x.has_sorted_indices:
        x = x.sorted_indices()
    x = counts_as_float32(x)
    n_rows = x.shape[0]
    totals = _row_sums(x) if n_counts is None else np.asarray(n_counts).reshape(-1)
    if len(totals) != n_rows:
        raise ValueError(f"n_counts has {len(totals)} values for {n_rows} cells")
    tgt = plan.target[x.indices]
    keep = (tgt >= 0) & (x.data != 0)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(x.indptr))[keep]
    tgt = tgt[keep].astype(np.int64)
    data = x.data[keep]
    if plan.collapse:
        # Sum the counts of columns that map onto one gene. Targets are numbered in the order of
        # their first column in var, so (cell, target) order is cell-major and var order within.
        n_targets = max(len(plan.tokens), 1)
        uniq, inverse = np.unique(rows * n_targets + tgt, return_inverse=True)
        summed = np.zeros(len(uniq), dtype=data.dtype)
        np.add.at(summed, inverse, data)
        nonzero = summed != 0
        rows, tgt, data = uniq[nonzero] // n_targets, uniq[nonzero] % n_targets, summed[nonzero]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_total = np.true_divide(1.0, totals.reshape(-1, 1)).ravel()
        values = data * inv_total[rows]
        values = values * TARGET_SUM
        values = values * plan.inv_median[tgt]
    return rows, tgt, values


def rank_value_encode(
    x: sp.csr_matrix, plan: GenePlan, vocab: Vocabulary, n_counts: np.ndarray | None = None
) -> Tokens:
    """Tokenise a CSR block of raw counts (cells x ``var`` genes) without densifying it.

    Parameters
    ----------
    x : scipy.sparse.csr_matrix
        Raw counts, columns in ``var`` order (the order :func:`plan_genes` saw).
    plan : GenePlan
    vocab : Vocabulary
    n_counts : np.ndarray, optional
        Per-cell totals to normalise by (default: the row sums of ``x``).

    Returns
    -------
    Tokens
        One token sequence per row of ``x``; a cell without vocabulary genes has none
        (or just ``<cls>``, ``<eos>``).
    """
    n_rows = x.shape[0]
    rows, tgt, values = normalised_values(x, plan, n_counts)
    counts = np.bincount(rows, minlength=n_rows).astype(np.int64)
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    keep = np.minimum(counts, vocab.max_genes)
    extra = 2 if vocab.special_token else 0
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(keep + extra, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    if vocab.special_token:
        ids[offsets[:-1]] = vocab.cls_id
        ids[offsets[1:] - 1] = vocab.eos_id
    pos_in_row = np.arange(len(rows), dtype=np.int64) - starts[rows]
    gene_tokens = plan.tokens[tgt]
    for a in range(0, n_rows, SORT_ROWS):
        b = min(a + SORT_ROWS, n_rows)
        lo, hi = starts[a], starts[b]
        width = int(counts[a:b].max(initial=0))
        if width == 0:
            continue
        # Sort keys: -value, padded with NaN, which sorts last (after any NaN value, the sort being
        # stable); the stable sort keeps var order among equal values.
        keys = np.full((b - a, width), np.nan)
        keys[rows[lo:hi] - a, pos_in_row[lo:hi]] = -values[lo:hi]
        order = np.argsort(keys, axis=1, kind="stable")
        take = np.arange(width) < keep[a:b, None]
        src = (order + starts[a:b, None])[take]
        dst_start = offsets[a:b] + (1 if vocab.special_token else 0)
        dst = (dst_start[:, None] + np.arange(width))[take]
        ids[dst] = gene_tokens[src]
    return Tokens(ids, offsets)
