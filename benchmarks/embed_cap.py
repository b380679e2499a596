"""Benchmark: the whole ``sclake embed`` command inside a memory cap, with a real-width model.

``benchmarks/embed_memory.py`` runs the encoder loop alone; ``benchmarks/scale.py`` runs the
command on 20,000 cells with the tiny architecture. This runs what a user runs, ``sclake
embed DATASET --device cpu`` (tokenization, the reader and writer threads, the model, the
Parquet parts), with the model files ``sclake models synthesize`` writes for ``--model``
(the real architecture, random weights), inside a memory cgroup of ``--limit`` bytes (the
v1 ``memory`` controller when mounted, else cgroup v2; as root).

For each size in ``--cells`` (the smallest first) the script makes a sample with ``sclake
sample`` (20,000 genes), ingests and validates it outside the cap (they are not measured
here), then embeds it inside the cap once per precision: fp32, and bf16 where the CPU has
bf16 instructions. Parts hold ``--part-cells`` cells, so that a larger sample is more
parts, as it is in a real lake. The profile's token budget is used.

Reported per precision and size: wall seconds, cells/s, the peak RSS of the command's
process tree (``benchmarks/common.py``), the cgroup's own peak (it also counts the page
cache of the command's reads and writes), its OOM kills, the tree's RSS about once a second
and its largest value in each third of the run. The process grows while it warms up (oneDNN
keeps state for each product shape, and the engine bounds their number), so the measure of
flatness is the largest run's RSS in its last third against its middle third; the ratio of
the largest size's peak RSS to the smallest's is reported beside it.
Everything goes under ``--workdir`` and is removed at the end. The result goes to
``benchmarks/results/embed_cap.json``.

Usage (as root, for the cgroup)::

    .venv/bin/python benchmarks/embed_cap.py [--cells 600,1800] [--limit 1.5GiB] [--model gf-6L-10M-i2048]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import gib, run_measured, write_result  # noqa: E402
from benchmarks.ingest import make_sample  # noqa: E402
from benchmarks.memory_cgroup import MemoryCgroup, parse_bytes  # noqa: E402

BIN = Path(sys.executable).parent
# How much the largest run's RSS may grow from its middle third to its last third (the first
# third holds the start and the warm-up: oneDNN's state for the bounded set of product shapes)
# and still count as flat.
FLAT_TOLERANCE = 0.05


def environment(root: Path, models: Path, model: str, part_cells: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_LAKE_URI=f"file://{root / 'lake'}",
        SCLAKE_HOME=str(root / "home"),
        SCLAKE_MODELS_DIR=str(models),
        SCLAKE_MODELS=model,
        SCLAKE_PART_CELLS=str(part_cells),
        SCLAKE_PUSHGATEWAY_URL="",
    )
    return env


def sclake(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a ``sclake`` command outside the cap; its stdout."""
    m = run_measured([str(BIN / "sclake"), *cmd], env=env, cwd=cwd)
    if m.returncode != 0:
        raise SystemExit(f"sclake {' '.join(cmd)} failed:\n{m.stderr[-3000:]}")
    return m.stdout


def embed_in_cap(cg: MemoryCgroup, dataset_id: str, precision: str, env: dict[str, str], root: Path) -> dict:
    """``sclake embed`` of the dataset inside the cgroup, measured; its row of the report."""
    cmd = [str(BIN / "sclake"), "embed", dataset_id, "--device", "cpu", "--precision", precision, "--json"]
    m, measured = cg.run(cmd, env=env, cwd=root)
    row: dict[str, Any] = {
        "precision": precision,
        **measured,
        "rss_by_third_bytes": thirds(m.rss_timeline, m.seconds),
        "rss_timeline": m.rss_timeline,
    }
    if m.returncode != 0:
        print(m.stderr[-3000:], file=sys.stderr)
        return row
    result = json.loads(m.stdout)
    row.update(
        cells=result["rows"],
        cells_per_second=round(result["rows"] / m.seconds, 2),
        engine_cells_per_second=result.get("cells_per_s"),
        tokens=result.get("tokens"),
        parts=result.get("parts"),
        engine_peak_rss_bytes=result.get("peak_rss_bytes"),
    )
    return row


def thirds(timeline: list[tuple[float, int]], seconds: float) -> list[int]:
    """The largest process-tree RSS in each third of the run (0 where a third has no sample)."""
    out = [0, 0, 0]
    for t, rss in timeline:
        i = min(2, int(3 * t / seconds)) if seconds > 0 else 0
        out[i] = max(out[i], rss)
    return out


def one_size(cg: MemoryCgroup, cells: int, precisions: list[str], args: argparse.Namespace, models: Path) -> list:
    """Sample, ingest and validate ``cells`` cells, then embed them in the cap once per precision."""
    path, _ = make_sample(args.workdir, cells, 20_000)
    root = args.workdir / f"run-{cells}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = environment(root, models, args.model, args.part_cells)
    rows = []
    try:
        dataset_id = json.loads(sclake(["ingest", str(path), "--json"], env, root))["dataset_id"]
        sclake(["validate", dataset_id, "--no-quarantine", "--model", args.model], env, root)
        for precision in precisions:
            shutil.rmtree(root / "lake" / "embeddings", ignore_errors=True)
            row = {"size": cells, **embed_in_cap(cg, dataset_id, precision, env, root)}
            rows.append(row)
            print(
                f"  {cells:6d} cells {precision}: rc {row['returncode']} {row['seconds']:7.1f}s "
                f"{row.get('cells_per_second') or 0:6.2f} cells/s  peak RSS {gib(row['peak_rss_tree_bytes'])} "
                f"(cgroup {gib(row['cgroup_peak_bytes'])}, OOM kills {row['oom_kills']})",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
    return rows


def flatness(rows: list[dict], precisions: list[str]) -> dict[str, Any]:
    """Per precision: the largest size's peak RSS (and cells/s) over the smallest's, and the largest
    run's RSS in its last third over its middle third (flat: at most ``1 + FLAT_TOLERANCE``)."""
    out = {}
    for precision in precisions:
        ok = sorted((r for r in rows if r["precision"] == precision and r["returncode"] == 0), key=lambda r: r["size"])
        if len(ok) < 2:
            out[precision] = {"flat": False, "reason": "fewer than two sizes finished"}
            continue
        small, large = ok[0], ok[-1]
        _, middle, last = large["rss_by_third_bytes"]
        growth = last / middle if middle else float("inf")
        out[precision] = {
            "sizes": [small["size"], large["size"]],
            "peak_rss_ratio": round(large["peak_rss_tree_bytes"] / small["peak_rss_tree_bytes"], 3),
            "cells_per_second_ratio": round(large["cells_per_second"] / small["cells_per_second"], 3),
            "largest_last_over_middle_third": round(growth, 3),
            "flat": growth <= 1 + FLAT_TOLERANCE and not any(r["oom_kills"] for r in ok),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="600,1800", help="Sample sizes, comma-separated.")
    ap.add_argument("--limit", default="1.5GiB", help="Memory cap of the embed command (the cgroup's limit).")
    ap.add_argument("--model", default="gf-6L-10M-i2048")
    ap.add_argument("--part-cells", type=int, default=300, help="Cells per part of the ingested dataset.")
    ap.add_argument("--precisions", default="fp32,bf16", help="bf16 is skipped where the CPU lacks it.")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-embed-cap"))
    args = ap.parse_args()

    from pipelines.models import synthesize
    from pipelines.profiles import bf16_supported
    from pipelines.settings import Settings

    sizes = sorted(int(c) for c in args.cells.split(","))
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    precisions = [p for p in wanted if p != "bf16" or bf16_supported("cpu")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = args.workdir / "models"
    synthesize(Settings(home=args.workdir / "home", models_dir=models, pushgateway_url=None), args.model)
    started = time.perf_counter()
    rows: list[dict] = []
    with MemoryCgroup(f"sclake-embed-cap-{os.getpid()}", parse_bytes(args.limit)) as cg:
        print(f"cap: {cg.describe()}; model {args.model}; precisions {precisions}", flush=True)
        for cells in sizes:
            rows.extend(one_size(cg, cells, precisions, args, models))
    shutil.rmtree(args.workdir, ignore_errors=True)
    result = flatness(rows, precisions)
    path = write_result(
        "embed_cap",
        {
            "benchmark": "sclake embed (CPU, real-width model, random weights) inside a memory cap, at two sizes",
            "command": f"benchmarks/embed_cap.py --cells {args.cells} --limit {args.limit} --model {args.model}",
            "limit_bytes": parse_bytes(args.limit),
            "part_cells": args.part_cells,
            "precisions_skipped": sorted(set(wanted) - set(precisions)),
            "runs": rows,
            "flatness": result,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(json.dumps(result, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
