"""From check results to an outcome, and from failure codes to reasons a user can act on.

Outcomes:

* ``pass``: every check passed;
* ``pass_with_warnings``: only ``warning``-severity checks failed (e.g. a few empty cells,
  which are dropped and counted);
* ``fail``: a ``critical`` check failed; the upload goes to quarantine with the reason of
  the first failing code in :data:`CODE_ORDER`, and every failing code in ``failed_checks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines import formats
from pipelines.outcomes import FAIL, PASS, WARN
from pipelines.validate.gx_runner import CheckResult

# Most fundamental first: the primary reason is the first failing code in this order.
CODE_ORDER = (
    "no_cells",
    "no_genes",
    "missing_cell_ids",
    "duplicate_cell_ids",
    "non_finite_values",
    "negative_values",
    "not_raw_counts",
    "duplicate_gene_ids",
    "not_ensembl_ids",
    "genes_not_in_vocabulary",
    "mostly_empty_cells",
)


def _examples(values: list[Any] | None, n: int = 3) -> str:
    if not values:
        return ""
    return " (e.g. " + ", ".join(repr(v) for v in list(values)[:n]) + ")"


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:.4g}"


def _looks(values: dict[str, Any]) -> str:
    hi = values.get("max")
    if hi is not None and hi <= 20:
        return f"looks log-normalised: max {_num(hi)}"
    return f"looks normalised (e.g. CPM or TPM): max {_num(hi)}"


def _reason_not_raw_counts(f: dict[str, Any]) -> str:
    v = f["values"]
    where = f.get("counts_source") or "X"
    searched = f.get("counts_searched") or ["layers['counts']", "raw.X"]
    others = " or ".join(s for s in searched if s != where)
    tail = f" and no {others} with integer counts was found" if others else ""
    return (
        f"{where} holds {v['n_nonint']:,} non-integer values{_examples(f.get('nonint_examples'))} ({_looks(v)}){tail}"
    )


def _non_finite(v: dict[str, Any]) -> str:
    parts = [f"{v[k]:,} {word}" for k, word in (("n_nan", "NaN"), ("n_inf", "infinite")) if v.get(k)]
    n = sum(int(v.get(k) or 0) for k in ("n_nan", "n_inf"))
    return " and ".join(parts) + (" value" if n == 1 else " values")


def _share(x: float) -> str:
    return f"{100 * x:.0f}%"


REASONS: dict[str, tuple[Any, str]] = {
    "no_cells": (
        lambda f: "the file holds no cells (X has 0 rows)",
        "Upload a file with at least one cell.",
    ),
    "no_genes": (
        lambda f: "the file holds no genes (X has 0 columns)",
        "Upload the count matrix with all its genes (var).",
    ),
    "missing_cell_ids": (
        lambda f: f"{f['cells']['n_missing_ids']:,} cells have an empty or missing id in obs_names",
        "Give every cell a unique id in obs_names, then upload again.",
    ),
    "duplicate_cell_ids": (
        lambda f: (
            f"{f['cells']['n_duplicate_ids']:,} cells share their id with another cell"
            f"{_examples(f['cells'].get('duplicate_examples'))}"
        ),
        "Make cell ids unique (e.g. adata.obs_names_make_unique(), or prefix them with the sample), then upload again.",
    ),
    "non_finite_values": (
        lambda f: f"{f.get('counts_source') or 'X'} holds {_non_finite(f['values'])}",
        "Upload raw counts without missing or infinite values.",
    ),
    "negative_values": (
        lambda f: (
            f"{f.get('counts_source') or 'X'} holds {f['values']['n_negative']:,} negative values "
            f"(min {_num(f['values']['min'])}): it looks scaled or centred, not raw counts"
        ),
        "Upload raw UMI counts (before scaling or regressing out), or put them in layers['counts'].",
    ),
    "not_raw_counts": (
        _reason_not_raw_counts,
        "Upload raw UMI counts, or put them in layers['counts'].",
    ),
    "duplicate_gene_ids": (
        lambda f: (
            f"{f['genes']['n_duplicate_ids']:,} genes share their id with another gene"
            f"{_examples(f['genes'].get('duplicate_examples'))}"
        ),
        "Keep one column per gene id (sum duplicated genes), then upload again.",
    ),
    "not_ensembl_ids": (
        lambda f: (
            f"only {_share(f['genes']['ensembl_share'])} of the {f['genes']['n_genes']:,} gene ids look like "
            f"Ensembl gene ids{_examples(f['genes'].get('non_ensembl_examples'))}; "
            "gene symbols cannot be matched to the model's vocabulary"
        ),
        "Put Ensembl gene ids (like ENSG00000141510) in var_names or in a var column named 'ensembl_id' or 'gene_ids'.",
    ),
    "genes_not_in_vocabulary": (
        lambda f: (
            f"only {f['genes']['n_in_vocabulary']:,} of {f['genes']['n_genes']:,} genes "
            f"({_share(f['genes']['vocabulary_share'])}) are in the vocabulary of model {f['model']!r}; "
            f"at least {_share(f['thresholds']['min_vocabulary_share'])} are needed"
        ),
        "Check that the data are human and the ids are Ensembl gene ids of the model's annotation, "
        "and upload all measured genes rather than a selection.",
    ),
    "mostly_empty_cells": (
        lambda f: (
            f"{f['cells']['n_dropped']:,} of {f['cells']['n_cells']:,} cells "
            f"({_share(f['cells']['dropped_share'])}) have no counts or fewer than "
            f"{f['thresholds']['min_genes']} genes detected; at most "
            f"{_share(1 - f['thresholds']['min_kept_share'])} may be dropped"
        ),
        "Upload the filtered matrix of called cells (not the raw droplet matrix), and check that X is "
        "cells x genes, not transposed.",
    ),
}


def reason_for(code: str, facts: dict[str, Any]) -> tuple[str, str]:
    """``(reason, hint)`` in plain words for failure ``code``, filled in from ``facts``."""
    if code not in REASONS:
        return f"check {code!r} failed", "See the validation report for details."
    make, hint = REASONS[code]
    return make(facts), hint


@dataclass
class ValidationResult:
    """What :func:`pipelines.validate.validate_dataset` found.

    Attributes
    ----------
    dataset_id, model : str
    outcome : str
        ``"pass"``, ``"pass_with_warnings"`` or ``"fail"``.
    code, reason, hint : str or None
        The primary failure (``None`` unless the outcome is ``fail``).
    failed_checks : list of str
        Every failing critical code, most fundamental first.
    warnings : list of str
        Plain-word warnings (e.g. cells dropped, with counts).
    counts : dict
        ``n_cells``, ``n_kept``, ``n_dropped``, ``n_genes``, ``n_genes_in_vocabulary``, ...
    checks : list of CheckResult
        Every expectation's result.
    report : str
        Lake path of ``validation.json``.
    data_docs : str
        Lake path of the Data Docs ``index.html``.
    """

    dataset_id: str
    model: str
    outcome: str
    code: str | None = None
    reason: str | None = None
    hint: str | None = None
    failed_checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    report: str = ""
    data_docs: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the dataset may go on to embedding (``pass`` or ``pass_with_warnings``)."""
        return self.outcome != FAIL

    def summary_line(self) -> str:
        if self.outcome == FAIL:
            return f"{self.dataset_id}: fail [{self.code}] {self.reason}. {self.hint}"
        extra = f" ({'; '.join(self.warnings)})" if self.warnings else ""
        return f"{self.dataset_id}: {self.outcome}, {self.counts.get('n_kept', 0):,} cells kept{extra}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **formats.encoding("validation"),
            "dataset_id": self.dataset_id,
            "model": self.model,
            "outcome": self.outcome,
            "code": self.code,
            "reason": self.reason,
            "hint": self.hint,
            "failed_checks": list(self.failed_checks),
            "warnings": list(self.warnings),
            "counts": dict(self.counts),
            "thresholds": dict(self.thresholds),
            "checks": [c.to_dict() for c in self.checks],
            "data_docs": self.data_docs,
            "duration_s": round(self.duration_s, 3),
        }


def decide(checks: list[CheckResult]) -> tuple[str, list[str], list[CheckResult]]:
    """``(outcome, failing critical codes in CODE_ORDER order, failing warning checks)``."""
    critical = {c.code for c in checks if not c.success and c.severity == "critical"}
    ordered = [c for c in CODE_ORDER if c in critical] + sorted(critical - set(CODE_ORDER))
    warned = [c for c in checks if not c.success and c.severity != "critical"]
    if ordered:
        return FAIL, ordered, warned
    return (WARN if warned else PASS), [], warned
