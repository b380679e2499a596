"""Small aggregate tables that the expectation suites validate, computed part by part.

X is never loaded whole: each Zarr part (a few thousand cells) is summarised on its own
(in a Dask task) into

* per-cell statistics (``total_counts``, ``n_genes``), a few numbers per cell;
* a value summary of the part (min, max, NaN/inf/negative/non-integer counts), one row;
* per-gene sums (cells expressing the gene, total counts), one vector per part, summed.

The per-cell suites validate each part's cells as their own batch
(:mod:`pipelines.validate.cell_checks`); the other tables are folded from the summaries as
they arrive (:class:`DatasetFold`): a row per part (values) or sums (genes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

# How many offending values a part keeps as examples (for reasons and reports).
EXAMPLES = 5


@dataclass
class PartSummary:
    """What one part contributes to the aggregate tables."""

    part: int
    total_counts: np.ndarray  # float64 (n_cells,)
    n_genes: np.ndarray  # int64 (n_cells,)
    gene_cells: np.ndarray  # int64 (n_vars,)
    gene_counts: np.ndarray  # float64 (n_vars,)
    values: dict[str, float | int] = field(default_factory=dict)
    nonint_examples: list[float] = field(default_factory=list)
    negative_examples: list[float] = field(default_factory=list)


def _stored(block: sp.spmatrix | np.ndarray) -> tuple[np.ndarray, sp.csr_matrix | None, int]:
    """``(values, csr, n_implicit)``: the stored values, the CSR form (None for dense), implicit zeros."""
    if sp.issparse(block):
        csr = sp.csr_matrix(block)
        n_implicit = csr.shape[0] * csr.shape[1] - csr.nnz
        return np.asarray(csr.data), csr, n_implicit
    dense = np.asarray(block)
    return dense.reshape(-1), None, 0


# Non-integer values a part keeps to find how many decimals they have (the first ones, in row order).
FRACTION_SAMPLE = 1000


class PartAccumulator:
    """Summarises a part block by block (consecutive rows, in order) into one :class:`PartSummary`.

    The result equals that of summarising the whole part at once: per-cell statistics are
    concatenated, gene sums added (exactly, for whole-number counts), extremes and counts
    combined, and the examples are the part's first ones in row order.
    """

    def __init__(self, part: int, n_vars: int) -> None:
        self.part = int(part)
        self.n_vars = int(n_vars)
        self.n_cells = 0
        self.totals: list[np.ndarray] = []
        self.genes: list[np.ndarray] = []
        self.gene_cells = np.zeros(n_vars, np.int64)
        self.gene_counts = np.zeros(n_vars, np.float64)
        self.counts = {"nnz": 0, "n_negative": 0, "n_nonint": 0, "n_nan": 0, "n_inf": 0}
        self.lo = self.hi = np.nan
        self.nonint: list[np.ndarray] = []  # the first FRACTION_SAMPLE non-integer values
        self.n_nonint_kept = 0
        self.negative: list[float] = []

    def add(self, block: sp.spmatrix | np.ndarray) -> None:
        """Summarise the next rows of the part (sparse or dense), without densifying them."""
        n_cells, n_vars = block.shape
        if n_vars != self.n_vars:
            raise ValueError(f"block of part {self.part} has {n_vars} columns; expected {self.n_vars}")
        values, csr, n_implicit = _stored(block)
        floating = values.dtype.kind == "f"
        nan = np.isnan(values) if floating else None
        inf = np.isinf(values) if floating else None
        n_nan, n_inf = (int(nan.sum()), int(inf.sum())) if floating else (0, 0)
        if n_nan or n_inf:
            finite_mask = ~(nan | inf)
            finite, clean = values[finite_mask], np.where(finite_mask, values, 0)
        else:  # the usual case: no copies (a float32 value is whole in float32 exactly when it is in float64)
            finite = clean = values
        del nan, inf
        nonint = finite != np.round(finite)
        negative = finite < 0
        lo = float(finite.min()) if finite.size else np.nan
        hi = float(finite.max()) if finite.size else np.nan
        if n_implicit:
            lo = 0.0 if np.isnan(lo) else min(lo, 0.0)
            hi = 0.0 if np.isnan(hi) else max(hi, 0.0)
        self.lo, self.hi = _extreme(self.lo, lo, min), _extreme(self.hi, hi, max)
        positive = clean > 0
        if csr is not None:
            rows = np.repeat(np.arange(n_cells), np.diff(csr.indptr))
            total = np.bincount(rows, weights=clean, minlength=n_cells)
            n_genes = np.bincount(rows, weights=positive, minlength=n_cells).astype(np.int64)
            self.gene_cells += np.bincount(csr.indices, weights=positive, minlength=n_vars).astype(np.int64)
            self.gene_counts += np.bincount(csr.indices, weights=clean, minlength=n_vars)
        else:
            grid = clean.reshape(n_cells, n_vars)
            pos = positive.reshape(n_cells, n_vars)
            total, n_genes = grid.sum(axis=1, dtype=np.float64), pos.sum(axis=1).astype(np.int64)
            self.gene_cells += pos.sum(axis=0).astype(np.int64)
            self.gene_counts += grid.sum(axis=0, dtype=np.float64)
        self.n_cells += n_cells
        self.totals.append(np.asarray(total, dtype=np.float64))
        self.genes.append(np.asarray(n_genes, dtype=np.int64))
        c = self.counts
        c["nnz"] += int(values.size if csr is not None else np.count_nonzero(values))
        c["n_negative"] += int(negative.sum())
        c["n_nonint"] += int(nonint.sum())
        c["n_nan"] += n_nan
        c["n_inf"] += n_inf
        if self.n_nonint_kept < FRACTION_SAMPLE:
            take = finite[nonint][: FRACTION_SAMPLE - self.n_nonint_kept].astype(np.float64)
            self.nonint.append(take)
            self.n_nonint_kept += take.size
        if len(self.negative) < EXAMPLES:
            self.negative.extend(float(v) for v in finite[negative][: EXAMPLES - len(self.negative)].astype(np.float64))

    def summary(self) -> PartSummary:
        """The part's summary (what :func:`summarise_block` returns for the whole part)."""
        nonint = np.concatenate(self.nonint) if self.nonint else np.zeros(0)
        values = {
            "part": self.part,
            "n_cells": self.n_cells,
            "nnz": self.counts["nnz"],
            "min": float(self.lo),
            "max": float(self.hi),
            **{k: self.counts[k] for k in ("n_negative", "n_nonint", "n_nan", "n_inf")},
            "max_fraction_digits": _fraction_digits(nonint),
        }
        return PartSummary(
            part=self.part,
            total_counts=np.concatenate(self.totals) if self.totals else np.zeros(0, np.float64),
            n_genes=np.concatenate(self.genes) if self.genes else np.zeros(0, np.int64),
            gene_cells=self.gene_cells,
            gene_counts=self.gene_counts,
            values=values,
            nonint_examples=[float(v) for v in nonint[:EXAMPLES]],
            negative_examples=list(self.negative),
        )


def _extreme(a: float, b: float, how: Any) -> float:
    """``how(a, b)`` where NaN stands for "no value yet"."""
    if np.isnan(a):
        return b
    return a if np.isnan(b) else how(a, b)


def summarise_block(block: sp.spmatrix | np.ndarray, part: int = 0) -> PartSummary:
    """Summarise one block of X (cells x genes, sparse or dense) without densifying it.

    Non-finite values are counted and left out of the sums and extremes, so that one NaN
    does not hide what the rest of the part holds.
    """
    acc = PartAccumulator(part, block.shape[1])
    acc.add(block)
    return acc.summary()


def _fraction_digits(values: np.ndarray) -> int:
    """Largest number of decimals (up to 6) among non-integer values; 0 when there are none."""
    if values.size == 0:
        return 0
    for digits in range(1, 7):
        if np.all(np.abs(values * 10**digits - np.round(values * 10**digits)) < 1e-3):
            return digits
    return 6


def kept_mask(total_counts: np.ndarray, n_genes: np.ndarray, min_genes: int) -> np.ndarray:
    """Cells that go on to embedding: counts > 0 and at least ``min_genes`` genes detected."""
    return (np.asarray(total_counts) > 0) & (np.asarray(n_genes) >= min_genes)


@dataclass
class Aggregates:
    """What the dataset suites and the reasons read, once every part is folded in."""

    values: pd.DataFrame  # one row per part, in part order
    gene_cells: np.ndarray
    gene_counts: np.ndarray
    nonint_examples: list[float]
    negative_examples: list[float]
    n_cells: int = 0
    n_empty: int = 0
    n_kept: int = 0


class DatasetFold:
    """Folds part summaries, in any order, into :class:`Aggregates` as they arrive.

    Holds the gene sums (two vectors), one row of value statistics per part and counts of
    cells: nothing per cell, so the memory does not grow with the number of cells.
    """

    VALUE_COLUMNS = ("part", "n_cells", "nnz", "min", "max", "n_negative", "n_nonint", "n_nan", "n_inf")

    def __init__(self, n_vars: int, min_genes: int) -> None:
        self.min_genes = int(min_genes)
        self.gene_cells = np.zeros(n_vars, np.int64)
        self.gene_counts = np.zeros(n_vars, np.float64)
        self.rows: dict[int, dict[str, float | int]] = {}
        self.examples: dict[int, tuple[list[float], list[float]]] = {}
        self.n_cells = self.n_empty = self.n_kept = 0

    def add(self, s: PartSummary) -> np.ndarray:
        """Fold in one part; returns its cells' kept mask."""
        self.gene_cells += s.gene_cells
        self.gene_counts += s.gene_counts
        self.rows[s.part] = s.values
        self.examples[s.part] = (s.nonint_examples, s.negative_examples)
        kept = kept_mask(s.total_counts, s.n_genes, self.min_genes)
        self.n_cells += len(kept)
        self.n_empty += int((np.asarray(s.total_counts) <= 0).sum())
        self.n_kept += int(kept.sum())
        return kept

    def result(self) -> Aggregates:
        parts = sorted(self.rows)
        values = pd.DataFrame([self.rows[p] for p in parts], columns=[*self.VALUE_COLUMNS, "max_fraction_digits"])
        return Aggregates(
            values=values,
            gene_cells=self.gene_cells,
            gene_counts=self.gene_counts,
            nonint_examples=[v for p in parts for v in self.examples[p][0]][:EXAMPLES],
            negative_examples=[v for p in parts for v in self.examples[p][1]][:EXAMPLES],
            n_cells=self.n_cells,
            n_empty=self.n_empty,
            n_kept=self.n_kept,
        )


def value_overview(values: pd.DataFrame) -> dict[str, float | int | None]:
    """Dataset-wide min/max and counts from the per-part value table."""
    if values.empty:
        return {"min": None, "max": None, "n_negative": 0, "n_nonint": 0, "n_nan": 0, "n_inf": 0, "nnz": 0}

    def _extreme(col: str, how: str) -> float | None:
        s = values[col].dropna()
        return None if s.empty else float(getattr(s, how)())

    return {
        "min": _extreme("min", "min"),
        "max": _extreme("max", "max"),
        "n_negative": int(values["n_negative"].sum()),
        "n_nonint": int(values["n_nonint"].sum()),
        "n_nan": int(values["n_nan"].sum()),
        "n_inf": int(values["n_inf"].sum()),
        "nnz": int(values["nnz"].sum()),
        "max_fraction_digits": int(values["max_fraction_digits"].max()),
    }
