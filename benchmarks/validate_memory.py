"""Benchmark: memory of validation's per-cell work against the number of cells.

Runs, for each ``--cells`` size in a fresh process, what validation does once the parts'
summaries arrive (no Zarr reading, which ``benchmarks/scale.py`` measures end to end):
``DatasetFold`` over the summaries, the per-cell suites (``sclake.obs``, ``sclake.cells``)
through Great Expectations part by part with their merge and the cell-id uniqueness check
over every part, and the Data Docs. The summaries are synthetic (``--part-cells`` cells a
part, ``--genes`` genes, unique ids ``cell-<n>``).

Reported per size: seconds, peak RSS of the process (``ru_maxrss``), its growth over the
process's RSS once Great Expectations is imported, and the growth per cell between the two
largest sizes. The result goes to ``benchmarks/results/validate_memory.json``.

Usage::

    .venv/bin/python benchmarks/validate_memory.py [--cells 100000 1000000] [--part-cells 16384]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_result  # noqa: E402

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np, pyarrow as pa
import great_expectations  # noqa: F401
from pipelines.validate.aggregates import DatasetFold, PartSummary
from pipelines.validate.cell_checks import CellChecks
from pipelines.validate.gx_runner import SuiteRunner

n, per, genes = (int(a) for a in sys.argv[1:4])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    runner = SuiteRunner(Path(tmp) / "docs")
    checks, fold = CellChecks(runner, "bench"), DatasetFold(genes, 20)
    base, started = rss(), time.perf_counter()
    for part, first in enumerate(range(0, n, per)):
        m = min(per, n - first)
        values = {"part": part, "n_cells": m, "nnz": 0, "min": 0.0, "max": 1.0, "n_negative": 0, "n_nonint": 0,
                  "n_nan": 0, "n_inf": 0, "max_fraction_digits": 0}
        s = PartSummary(part, rng.random(m) * 1000 + 1, rng.integers(300, 2000, m), np.zeros(genes, np.int64),
                        np.zeros(genes), values)
        ids = pa.array([f"cell-{i:09d}" for i in range(first, first + m)], pa.string())
        fold.add(s)
        checks.add(part, ids, s)
    merged, facts = checks.finish(lambda part: None)
    runner.build_docs()
    assert all(c.success for r in merged.values() for c in r) and facts["n_duplicate_ids"] == 0
    print(json.dumps({"cells": n, "parts": part + 1, "seconds": round(time.perf_counter() - started, 2),
                      "rss_after_imports_bytes": base, "peak_rss_bytes": rss()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--part-cells", type=int, default=16_384)
    ap.add_argument("--genes", type=int, default=20_000)
    args = ap.parse_args()
    rows = []
    for n in sorted(args.cells):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(args.part_cells), str(args.genes)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            raise SystemExit(f"{n:,} cells failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["growth_bytes"] = row["peak_rss_bytes"] - row["rss_after_imports_bytes"]
        rows.append(row)
        print(
            f"{n:>10,} cells {row['parts']:4d} parts {row['seconds']:7.1f}s  peak RSS "
            f"{row['peak_rss_bytes'] / 2**20:6.0f} MiB (+{row['growth_bytes'] / 2**20:.0f} MiB)",
            flush=True,
        )
    small, large = rows[-2] if len(rows) > 1 else rows[0], rows[-1]
    per_cell = (large["peak_rss_bytes"] - small["peak_rss_bytes"]) / max(1, large["cells"] - small["cells"])
    summary = {"bytes_per_cell_between_the_largest_sizes": round(per_cell, 1)}
    out = write_result(
        "validate_memory",
        {
            "benchmark": "validation's per-cell suites, merge, uniqueness check and Data Docs vs number of cells",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "sizes": rows,
            "summary": summary,
        },
    )
    print(json.dumps(summary), f"\nresult: {out}")


if __name__ == "__main__":
    main()
