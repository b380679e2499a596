"""Run the dataset suites over the aggregate tables and turn the results into a :class:`ValidationResult`.

This module knows nothing about Zarr or the lake: it takes gene ids, the folded per-part
summaries and the merged results of the per-cell suites (:mod:`pipelines.validate.cell_checks`),
so it can be exercised on any matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.validate.aggregates import Aggregates, value_overview
from pipelines.validate.gx_runner import CheckResult, SuiteRunner
from pipelines.validate.outcome import FAIL, ValidationResult, decide, reason_for
from pipelines.validate.suites import DATASET_SUITES, load_suite, thresholds
from pipelines.validate.vocabulary import in_vocabulary


@dataclass
class Inputs:
    """What the dataset suites look at, besides the per-part aggregates."""

    dataset_id: str
    model: str
    gene_ids: np.ndarray  # object array of str (or None)
    vocabulary: frozenset[str]
    mapping: dict[str, str]
    counts_source: str | None = None  # e.g. "X", "layers['counts']", "raw.X"
    counts_searched: list[str] | None = None


def _duplicates(ids: pd.Series) -> tuple[int, list[str]]:
    dup = ids[ids.duplicated(keep=False) & ids.notna()]
    return int(len(dup)), [str(x) for x in dup.drop_duplicates().head(3)]


def tables(inputs: Inputs, agg: Aggregates) -> dict[str, pd.DataFrame]:
    """The tables the whole-dataset suites validate, by suite name (the per-cell suites go part by part)."""
    var = pd.DataFrame(
        {
            "gene_id": pd.Series(inputs.gene_ids, dtype=object),
            "in_vocabulary": in_vocabulary(inputs.gene_ids, inputs.vocabulary, inputs.mapping),
            "n_cells": agg.gene_cells if len(agg.gene_cells) == len(inputs.gene_ids) else 0,
            "total_counts": agg.gene_counts if len(agg.gene_counts) == len(inputs.gene_ids) else 0.0,
        }
    )
    return {"sclake.var": var, "sclake.values": agg.values}


def facts(
    inputs: Inputs, agg: Aggregates, var: pd.DataFrame, cell_facts: dict[str, Any], limits: dict[str, Any]
) -> dict[str, Any]:
    """Numbers the reasons and the report quote (all plain JSON values)."""
    n_dup_genes, dup_genes = _duplicates(var["gene_id"])
    pattern = limits["ensembl_pattern"]
    gene_str = var["gene_id"].astype("string")
    is_ensembl = gene_str.str.match(pattern).fillna(False).to_numpy(dtype=bool)
    n_genes = len(var)
    n_cells = agg.n_cells
    return {
        "dataset_id": inputs.dataset_id,
        "model": inputs.model,
        "counts_source": inputs.counts_source,
        "counts_searched": inputs.counts_searched,
        "thresholds": limits,
        "values": value_overview(agg.values),
        "nonint_examples": agg.nonint_examples,
        "negative_examples": agg.negative_examples,
        "cells": {
            "n_cells": n_cells,
            "n_missing_ids": int(cell_facts["n_missing_ids"]),
            "n_duplicate_ids": int(cell_facts["n_duplicate_ids"]),
            "duplicate_examples": list(cell_facts["duplicate_examples"]),
            "n_kept": agg.n_kept,
            "n_dropped": n_cells - agg.n_kept,
            "n_empty": agg.n_empty,
            "dropped_share": float((n_cells - agg.n_kept) / n_cells) if n_cells else 0.0,
        },
        "genes": {
            "n_genes": n_genes,
            "n_duplicate_ids": n_dup_genes,
            "duplicate_examples": dup_genes,
            "ensembl_share": float(is_ensembl.mean()) if n_genes else 0.0,
            "non_ensembl_examples": [str(g) for g in var["gene_id"][~is_ensembl].head(3)],
            "n_in_vocabulary": int(var["in_vocabulary"].sum()),
            "vocabulary_share": float(var["in_vocabulary"].mean()) if n_genes else 0.0,
            "vocabulary_counts_share": _counts_share(var),
        },
    }


def _counts_share(var: pd.DataFrame) -> float | None:
    total = float(np.nansum(var["total_counts"].to_numpy(dtype=float))) if len(var) else 0.0
    if total <= 0:
        return None
    return float(np.nansum(var["total_counts"].to_numpy(dtype=float)[var["in_vocabulary"].to_numpy()]) / total)


def all_limits() -> dict[str, Any]:
    """Every dataset suite's thresholds in one dict (names are unique across suites)."""
    out: dict[str, Any] = {}
    for name in DATASET_SUITES:
        out.update(thresholds(name))
    return out


def _warnings(f: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    c = f["cells"]
    out = []
    if c["n_dropped"]:
        low = c["n_dropped"] - c["n_empty"]
        parts = []
        if c["n_empty"]:
            parts.append(f"{c['n_empty']:,} with no counts")
        if low:
            parts.append(f"{low:,} with fewer than {limits['min_genes']} genes detected")
        out.append(
            f"{c['n_dropped']:,} of {c['n_cells']:,} cells dropped ({' and '.join(parts)}); "
            f"{c['n_kept']:,} cells go on to embedding"
        )
    return out


def run_checks(
    inputs: Inputs,
    agg: Aggregates,
    runner: SuiteRunner,
    per_cell: dict[str, list[CheckResult]],
    cell_facts: dict[str, Any],
) -> ValidationResult:
    """Validate the whole-dataset tables with their suites on ``runner`` and decide the outcome from
    every dataset suite's results, the per-cell ones (``per_cell``, merged over the parts) included."""
    started = time.perf_counter()
    limits = all_limits()
    tabs = tables(inputs, agg)
    checks = []
    for name in DATASET_SUITES:
        load_suite(name)  # fail early, with the file name, on a broken suite
        if name in per_cell:
            checks.extend(per_cell[name])
        else:
            checks.extend(runner.run(name, tabs[name], thresholds(name), run_name=inputs.dataset_id))
    outcome, failed, _warned = decide(checks)
    f = facts(inputs, agg, tabs["sclake.var"], cell_facts, limits)
    result = ValidationResult(
        dataset_id=inputs.dataset_id,
        model=inputs.model,
        outcome=outcome,
        failed_checks=failed,
        checks=checks,
        thresholds=limits,
        counts={
            "n_cells": f["cells"]["n_cells"],
            "n_kept": f["cells"]["n_kept"] if outcome != FAIL else 0,
            "n_dropped": f["cells"]["n_dropped"],
            "n_empty": f["cells"]["n_empty"],
            "n_genes": f["genes"]["n_genes"],
            "n_genes_in_vocabulary": f["genes"]["n_in_vocabulary"],
            "vocabulary_share": round(f["genes"]["vocabulary_share"], 4),
            "vocabulary_counts_share": f["genes"]["vocabulary_counts_share"],
            "ensembl_share": round(f["genes"]["ensembl_share"], 4),
            "values": f["values"],
            "counts_source": inputs.counts_source,
        },
    )
    if outcome == FAIL:
        result.code = failed[0]
        result.reason, result.hint = reason_for(failed[0], f)
    else:
        result.warnings = _warnings(f, limits)
    result.duration_s = time.perf_counter() - started
    return result
