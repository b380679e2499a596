"""Benchmark: ``sclake ingest`` vs ``anndata.read_h5ad`` + ``write_zarr`` on the same files.

Two synthetic samples (``sclake sample``), the larger at least 4x the smaller and holding
at least 2 GB of count data (CSR ``data`` + ``indices`` + ``indptr``, uncompressed). For
each file, in the same run and on the same warm page cache:

* sclake: ``sclake ingest FILE --json`` into a fresh ``file://`` lake (hash, raw copy and
  verification, conversion by a LocalCluster of worker processes, atomic publish);
* anndata: ``python -c "read_h5ad(FILE).write_zarr(OUT)"`` (Zarr v3, anndata's defaults).

Both are whole commands, started fresh: interpreter start-up and imports, and for sclake
the start of its Dask workers, are part of what is timed. The two run alternately
``--repeats`` times per file; before each run the page cache is flushed of dirty pages
(``sync``), so that neither pays for the other's write-back. Reported: wall seconds (the
median, and every run), cells/s and their ratio (sclake / anndata, of the medians), and
the peak RSS of each command's whole process tree (the sum over the driver, the Dask
nannies and workers, sampled every 50 ms; see ``benchmarks/common.py``; the largest of
the runs). Targets: sclake's peak RSS on the larger file is at most 1.2x that on the
smaller one and at most 1.5 GB, and its throughput is at least anndata's. The result
goes to ``benchmarks/results/ingest.json``.

Usage::

    .venv/bin/python benchmarks/ingest.py [--small 50000] [--large 200000] [--repeats 3] [--workdir /tmp/sclake-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Measured, gib, run_measured, write_result  # noqa: E402

BIN = Path(sys.executable).parent
ANNDATA_CODE = (
    "import sys, anndata as ad; ad.settings.zarr_write_format = 3; ad.read_h5ad(sys.argv[1]).write_zarr(sys.argv[2])"
)
RSS_LIMIT_BYTES = 1.5e9
RSS_FLAT_RATIO = 1.2


def count_bytes(path: Path) -> tuple[int, int]:
    """``(nnz, bytes of data + indices + indptr)`` of the file's CSR X."""
    with h5py.File(path, "r") as f:
        x = f["X"]
        return int(x["data"].shape[0]), sum(x[k].size * x[k].dtype.itemsize for k in ("data", "indices", "indptr"))


def make_sample(workdir: Path, cells: int, genes: int) -> tuple[Path, dict]:
    path = workdir / f"sample-{cells}x{genes}.h5ad"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    m = run_measured([str(BIN / "sclake"), "sample", str(path), "--cells", str(cells), "--genes", str(genes)])
    if m.returncode != 0:
        raise SystemExit(f"sclake sample failed:\n{m.stderr}")
    info = {"seconds": m.seconds, "peak_rss_tree_bytes": m.peak_rss_tree_bytes}
    meta.write_text(json.dumps(info))
    return path, info


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def run_sclake(path: Path, workdir: Path, workers: int) -> tuple[Measured, dict]:
    root = workdir / "sclake"
    shutil.rmtree(root, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_LAKE_URI=f"file://{root / 'lake'}", SCLAKE_HOME=str(root / "home"), SCLAKE_DASK_WORKERS=str(workers)
    )
    root.mkdir(parents=True)
    m = run_measured([str(BIN / "sclake"), "ingest", str(path), "--json"], env=env, cwd=root)
    if m.returncode != 0:
        raise SystemExit(f"sclake ingest failed:\n{m.stderr[-4000:]}")
    summary = json.loads(m.stdout)
    summary["zarr_bytes"] = sum(p.stat().st_size for p in (root / "lake" / "zarr").rglob("*") if p.is_file())
    shutil.rmtree(root, ignore_errors=True)
    return m, summary


def run_anndata(path: Path, workdir: Path) -> tuple[Measured, dict]:
    out = workdir / "anndata.zarr"
    shutil.rmtree(out, ignore_errors=True)
    m = run_measured([sys.executable, "-c", ANNDATA_CODE, str(path), str(out)])
    if m.returncode != 0:
        raise SystemExit(f"anndata failed:\n{m.stderr[-4000:]}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return m, {"zarr_bytes": size}


def side(runs: list[tuple[Measured, dict]], cells: int) -> dict:
    """The median run's figures, every run's seconds, and the largest peak RSS of all runs."""
    seconds = [m.seconds for m, _ in runs]
    median = statistics.median(seconds)
    m, extra = min(runs, key=lambda r: abs(r[0].seconds - median))
    return {
        "seconds": round(median, 2),
        "cells_per_second": round(cells / median, 1),
        "seconds_runs": [round(x, 2) for x in seconds],
        "peak_rss_tree_bytes": max(r.peak_rss_tree_bytes for r, _ in runs),
        "peak_rss_process_bytes": max(r.peak_rss_process_bytes for r, _ in runs),
        "cpu_seconds": round(m.cpu_seconds, 1),
        "processes": m.processes_seen,
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=50_000, help="Cells of the smaller file.")
    ap.add_argument("--large", type=int, default=200_000, help="Cells of the larger file (>= 4x --small).")
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes for sclake.")
    ap.add_argument("--repeats", type=int, default=3, help="Runs of each command per file, alternated.")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench"))
    ap.add_argument("--keep", action="store_true", help="Keep the sample files for the next run.")
    args = ap.parse_args()
    if args.large < 4 * args.small:
        raise SystemExit(f"--large {args.large} must be at least 4x --small {args.small}")
    args.workdir.mkdir(parents=True, exist_ok=True)

    runs = []
    for cells in (args.small, args.large):
        path, sample_info = make_sample(args.workdir, cells, args.genes)
        nnz, nbytes = count_bytes(path)
        warm(path)
        load_before = os.getloadavg()
        print(f"{cells:,} cells: {gib(nbytes)} of count data, file {gib(path.stat().st_size)}", flush=True)
        sclake_runs, anndata_runs = [], []
        for _ in range(args.repeats):
            os.sync()
            m, summary = run_sclake(path, args.workdir, args.workers)
            sclake_runs.append((m, {"timings": summary.get("timings", {}), "zarr_bytes": summary["zarr_bytes"]}))
            warm(path)
            os.sync()
            anndata_runs.append(run_anndata(path, args.workdir))
            warm(path)
        row = {
            "cells": cells,
            "genes": args.genes,
            "nnz": nnz,
            "count_bytes": nbytes,
            "file_bytes": path.stat().st_size,
            "sample": sample_info,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "sclake": side(sclake_runs, cells),
            "anndata": side(anndata_runs, cells),
        }
        row["throughput_ratio"] = round(row["sclake"]["cells_per_second"] / row["anndata"]["cells_per_second"], 3)
        runs.append(row)
        for name in ("sclake", "anndata"):
            r = row[name]
            print(
                f"  {name:8s}{r['seconds']:8.1f}s {r['cells_per_second']:9.0f} cells/s  runs {r['seconds_runs']}  "
                f"cpu {r['cpu_seconds']:6.1f}s  "
                f"peak RSS {gib(r['peak_rss_tree_bytes'])} (largest process {gib(r['peak_rss_process_bytes'])})",
                flush=True,
            )
        print(f"  sclake phases {row['sclake']['timings']}; throughput ratio {row['throughput_ratio']:.2f}", flush=True)
        if not args.keep:
            path.unlink()
            path.with_suffix(".json").unlink()

    small, large = runs
    rss_ratio = large["sclake"]["peak_rss_tree_bytes"] / small["sclake"]["peak_rss_tree_bytes"]
    targets = {
        "large_has_2GB_count_data": large["count_bytes"] >= 2e9,
        "large_is_4x_small": large["cells"] >= 4 * small["cells"],
        "sclake_rss_flat": rss_ratio <= RSS_FLAT_RATIO,
        "sclake_rss_under_1_5GB": large["sclake"]["peak_rss_tree_bytes"] <= RSS_LIMIT_BYTES,
        "sclake_throughput_at_least_anndata": all(r["throughput_ratio"] >= 1.0 for r in runs),
    }
    out = write_result(
        "ingest",
        {
            "benchmark": "sclake ingest vs anndata.read_h5ad + write_zarr (zarr v3)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "workers": args.workers,
            "repeats": args.repeats,
            "runs": runs,
            "sclake_rss_large_over_small": round(rss_ratio, 3),
            "targets": targets,
        },
    )
    print(f"sclake peak RSS large/small {rss_ratio:.2f}; targets: {targets}\nresult: {out}")


if __name__ == "__main__":
    main()
