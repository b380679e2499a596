"""The per-cell suites (``sclake.obs``, ``sclake.cells``), one part at a time.

Great Expectations validates each part's cells as a batch of its own, in the order the
parts' summaries arrive, and the results are merged into one result per expectation, as if
the suite had validated the whole table:

* counts (``element_count``, ``unexpected_count``, ``missing_count``) are summed and the
  share recomputed from the sums; success is decided again on the sums (``mostly`` against
  the whole dataset, not part by part);
* a row-count expectation is decided on the dataset's number of rows;
* uniqueness of cell ids, which a part alone cannot see across parts, is decided on every
  id: a 64-bit hash per id is kept (8 bytes a cell), and ids whose hash appears more than
  once are read again and compared exactly.

So the memory holds one part's tables at a time (plus the hashes), not the whole dataset's.
Each part's run is in the Data Docs (run name ``<dataset_id>-part-<n>``); ``gx_results.json``
gets the merged results, with each batch's success and statistics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.validate.aggregates import PartSummary
from pipelines.validate.gx_runner import CheckResult, SuiteRunner
from pipelines.validate.suites import load_suite, thresholds

PER_CELL_SUITES = ("sclake.obs", "sclake.cells")
EXAMPLES = 5
ROW_COUNT = "expect_table_row_count_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"


def part_tables(part: int, ids: pa.Array, s: PartSummary | None) -> dict[str, pd.DataFrame]:
    """The tables the per-cell suites validate, for one part (``s`` None: empty tables)."""
    n = len(ids)
    obs = pd.DataFrame({"cell_id": pd.Series(ids.cast(pa.string()), dtype=pd.ArrowDtype(pa.string()))}, copy=False)
    cells = pd.DataFrame(
        {
            "part": np.full(n, part, np.int32),
            "row": np.arange(n, dtype=np.int32),
            "total_counts": np.asarray(s.total_counts if s is not None else [], np.float64),
            "n_genes": np.asarray(s.n_genes if s is not None else [], np.int64),
        }
    )
    return {"sclake.obs": obs, "sclake.cells": cells}


def _missing(ids: pa.Array) -> int:
    """Ids that are null or empty."""
    return int(ids.null_count) + int(pc.sum(pc.equal(pc.utf8_length(ids), 0)).as_py() or 0)


def _hashes(ids: pa.Array) -> np.ndarray:
    """uint64 hashes of the non-null ids."""
    present = ids.drop_null().to_numpy(zero_copy_only=False)
    return pd.util.hash_array(np.asarray(present, dtype=object), categorize=False)


def _resolve(value: Any, parameters: dict[str, Any]) -> Any:
    if isinstance(value, dict) and "$PARAMETER" in value:
        return parameters.get(value["$PARAMETER"])
    return value


class _Merged:
    """One expectation's results over the parts seen so far."""

    def __init__(self, first: CheckResult, kwargs: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.first = first
        self.kwargs = {k: _resolve(v, parameters) for k, v in kwargs.items()}
        self.counts: Counter[str] = Counter()
        self.examples: list[Any] = []
        self.all_success = True

    def add(self, c: CheckResult) -> None:
        self.all_success &= c.success
        for key in ("element_count", "unexpected_count", "missing_count"):
            if isinstance(c.observed.get(key), int):
                self.counts[key] += c.observed[key]
        if self.first.expectation == ROW_COUNT and isinstance(c.observed.get("observed_value"), int):
            self.counts["observed_value"] += c.observed["observed_value"]
        room = EXAMPLES - len(self.examples)
        if room > 0:
            self.examples.extend((c.observed.get("unexpected_examples") or [])[:room])

    def result(self) -> CheckResult:
        observed = {k: v for k, v in self.first.observed.items() if k not in ("exception", "unexpected_examples")}
        observed.update(self.counts)
        success = self.all_success
        if self.first.expectation == ROW_COUNT:
            rows = self.counts["observed_value"]
            lo, hi = self.kwargs.get("min_value"), self.kwargs.get("max_value")
            success = (lo is None or rows >= lo) and (hi is None or rows <= hi)
        elif "unexpected_count" in self.counts or "element_count" in self.counts:
            present = self.counts["element_count"] - self.counts["missing_count"]
            bad = self.counts["unexpected_count"]
            observed["unexpected_percent"] = 100.0 * bad / present if present else 0.0
            mostly = self.kwargs.get("mostly")
            if present == 0:
                success = True
            elif mostly is not None:
                success = (present - bad) / present >= float(mostly)
            else:
                success = bad == 0
            success = success and not self.first.observed.get("exception")
        if self.examples:
            observed["unexpected_examples"] = self.examples
        return replace(self.first, success=bool(success), observed=observed)


class CellChecks:
    """Runs the per-cell suites on each part as it comes and merges the results.

    Parameters
    ----------
    runner : SuiteRunner
        The GX context the runs go to (and their Data Docs).
    dataset_id : str
    """

    def __init__(self, runner: SuiteRunner, dataset_id: str) -> None:
        self.runner = runner
        self.dataset_id = dataset_id
        self.merged: dict[str, list[_Merged]] = {}
        self.batches: dict[str, list[dict[str, Any]]] = {name: [] for name in PER_CELL_SUITES}
        self.hashes: list[np.ndarray] = []
        self.n_missing = 0
        self.n_cells = 0

    def add(self, part: int, ids: pa.Array, s: PartSummary | None) -> None:
        """Validate one part's cells (``ids`` in row order; ``s`` its summary)."""
        tables = part_tables(part, ids, s)
        for name in PER_CELL_SUITES:
            run_name = f"{self.dataset_id}-part-{part}"
            checks, stats = self.runner.run_batch(name, tables[name], thresholds(name), run_name=run_name)
            self._merge(name, checks)
            self.batches[name].append({"part": int(part), "success": all(c.success for c in checks), **stats})
        self.hashes.append(_hashes(ids))
        self.n_missing += _missing(ids)
        self.n_cells += len(ids)

    def _merge(self, name: str, checks: list[CheckResult]) -> None:
        if name not in self.merged:
            parameters = thresholds(name)
            specs = {(e["type"], (e.get("meta") or {}).get("code")): e for e in load_suite(name)["expectations"]}
            self.merged[name] = [
                _Merged(c, dict(specs.get((c.expectation, c.code), {}).get("kwargs") or {}), parameters) for c in checks
            ]
        for m, c in zip(self.merged[name], checks, strict=True):
            m.add(c)

    def finish(self, read_ids: Callable[[int], pa.Array]) -> tuple[dict[str, list[CheckResult]], dict[str, Any]]:
        """Merged results by suite, and the facts about cell ids the reasons quote.

        ``read_ids(part)`` reads a part's ids again; it is called only when two ids share a hash.
        """
        if not self.merged:  # no parts: the suites still run, on empty tables
            self.add(0, pa.array([], pa.string()), None)
            self.n_cells = 0
        n_dup, examples = self._duplicates(read_ids)
        out: dict[str, list[CheckResult]] = {}
        for name, merged in self.merged.items():
            results = []
            for m in merged:
                if m.first.expectation == UNIQUE:
                    m.counts["unexpected_count"] = n_dup
                    m.examples = examples[:EXAMPLES]
                results.append(m.result())
            out[name] = results
            self.runner.record(name, self._json(name, results))
        facts = {"n_missing_ids": self.n_missing, "n_duplicate_ids": n_dup, "duplicate_examples": examples[:3]}
        return out, facts

    def _duplicates(self, read_ids: Callable[[int], pa.Array]) -> tuple[int, list[str]]:
        """Cells whose id another cell also has (every one of them), and a few such ids, in order."""
        all_hashes = np.sort(np.concatenate(self.hashes)) if self.hashes else np.zeros(0, np.uint64)
        twice = all_hashes[1:][all_hashes[1:] == all_hashes[:-1]]
        if twice.size == 0:
            return 0, []
        suspects = np.unique(twice)
        seen: Counter[str] = Counter()
        for batch in sorted(self.batches[PER_CELL_SUITES[0]], key=lambda b: b["part"]):
            ids = read_ids(batch["part"]).drop_null()
            hit = np.isin(_hashes(ids), suspects)
            seen.update(str(v) for v, h in zip(ids.to_pylist(), hit, strict=True) if h)
        repeated = [v for v, n in seen.items() if n > 1]
        return sum(seen[v] for v in repeated), repeated

    def _json(self, name: str, results: list[CheckResult]) -> dict[str, Any]:
        batches = sorted(self.batches[name], key=lambda b: b["part"])
        return {
            "suite_name": name,
            "success": all(r.success for r in results),
            "batches": batches,
            "statistics": {
                "evaluated_expectations": len(results),
                "successful_expectations": sum(r.success for r in results),
                "unsuccessful_expectations": sum(not r.success for r in results),
                "batches": len(batches),
            },
            "results": [r.to_dict() for r in results],
        }
