"""Benchmark: ingest, validation and tokenization of a large sample inside a memory cap, and cost per cell.

For each of two sizes (``--baseline`` cells, then ``--cells``; 20,000 genes at ``sclake
sample``'s default depth, about 12.7 KB of CSR counts per cell) the script makes a sample
with ``sclake sample`` (streamed, bounded memory), then runs, each as a fresh command inside
a memory cgroup of ``--limit`` bytes (the v1 ``memory`` controller when mounted, else
cgroup v2):

* ``sclake ingest FILE --json``;
* ``sclake validate ID --no-quarantine --json``;
* tokenization alone (``tokenize_dataset``, the first phase of ``sclake embed``);
* ``anndata.read_h5ad`` of the same file (the lake's raw copy), which must be killed by the
  cap: the proof that the limit is enforced.

and, on a ``--subset``-cell sample, the whole ``sclake embed --device cpu`` with the model
files ``sclake models synthesize --tiny`` writes (random weights, the tiny architecture:
embedding speed is not what this measures), under the same cap.

Reported per step and size: wall seconds, cells/s, the peak RSS of the command's process
tree (``benchmarks/common.py``), the cgroup's own peak (which also counts the page cache the
command's reads and writes charge to it) and its OOM kills, with the load average around
each step (the machine is shared). The ratio of each step's cells/s at the large size to
that at the baseline: within 10% means that the cost per cell does not grow with the number
of cells. Everything written goes under ``--workdir`` and is removed at the end (the lake
after each size, the samples unless ``--keep``); before ingesting, the script checks that the
disk holds the raw copy, the Zarr store and the tokens. The result goes to
``benchmarks/results/scale.json``.

Usage (as root, for the cgroup)::

    .venv/bin/python benchmarks/scale.py [--cells 1000000] [--baseline 200000] [--limit 2GiB]
        [--subset 20000] [--workdir /tmp/sclake-scale] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import gib, run_measured, write_result  # noqa: E402
from benchmarks.ingest import count_bytes, make_sample  # noqa: E402
from benchmarks.memory_cgroup import MemoryCgroup, parse_bytes  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "gf-6L-10M-i2048"
LINEAR_TOLERANCE = 0.10
# Disk the lake takes while ingesting, per byte of the file: its raw copy and the Zarr store (0.26). The
# tokens (0.24) come once the sample is removed (the raw copy holds the same bytes).
LAKE_OVERHEAD = 1.3
DISK_MARGIN = 3 << 30
TOKENIZE_CODE = (
    "import json, sys; from pipelines.settings import get_settings; from pipelines.embed.tokens import "
    "tokenize_dataset; r = tokenize_dataset(get_settings(), sys.argv[1], sys.argv[2]); "
    "print(json.dumps({'cells': r.cells, 'tokens': r.tokens, 'parts': r.parts}))"
)
READ_H5AD_CODE = "import sys, anndata as ad; a = ad.read_h5ad(sys.argv[1]); print(a.shape)"


def environment(root: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(SCLAKE_LAKE_URI=f"file://{root / 'lake'}", SCLAKE_HOME=str(home), SCLAKE_MODELS=MODEL)
    return env


def step(cg: MemoryCgroup, name: str, cmd: list[str], env: dict[str, str], cells: int, cwd: Path) -> dict[str, Any]:
    """Run one command inside the cgroup, measured; its figures (and its stdout, for the caller)."""
    m, measured = cg.run(cmd, env=env, cwd=cwd)
    row = {
        "step": name,
        "cells": cells,
        **measured,
        "cells_per_second": round(cells / m.seconds, 1) if m.returncode == 0 else None,
    }
    print(
        f"  {name:9s} rc {m.returncode:3d} {m.seconds:8.1f}s {row['cells_per_second'] or 0:9.0f} cells/s  "
        f"peak RSS {gib(m.peak_rss_tree_bytes)} (cgroup {gib(row['cgroup_peak_bytes'])}, "
        f"OOM kills {row['oom_kills']})  load {row['load_average_before'][0]:.1f}",
        flush=True,
    )
    if m.returncode != 0 and name != "read_h5ad":
        print(m.stderr[-3000:], file=sys.stderr)
    row["stdout"] = m.stdout
    return row


def check_disk(path: Path, workdir: Path) -> None:
    need = int(path.stat().st_size * LAKE_OVERHEAD) + DISK_MARGIN
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(
            f"{path.name}: the lake needs about {gib(need)} of disk, {gib(free)} are free; use fewer --cells"
        )


def pipeline(cg: MemoryCgroup, path: Path, cells: int, workdir: Path, home: Path, *, drop_sample: bool) -> list[dict]:
    """Ingest, validate, tokenize, then read_h5ad under the cap; the lake is removed afterwards."""
    root = workdir / f"run-{cells}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = environment(root, home)
    check_disk(path, workdir)
    rows = []
    try:
        rows.append(step(cg, "ingest", [str(BIN / "sclake"), "ingest", str(path), "--json"], env, cells, root))
        if rows[-1]["returncode"]:
            return rows
        dataset_id = json.loads(rows[-1]["stdout"])["dataset_id"]
        raw = root / "lake" / "raw" / f"{dataset_id}.h5ad"
        if drop_sample:  # the lake's raw copy holds the same bytes
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
        validate = [str(BIN / "sclake"), "validate", dataset_id, "--no-quarantine", "--json", "--model", MODEL]
        rows.append(step(cg, "validate", validate, env, cells, root))
        tokenize = [sys.executable, "-c", TOKENIZE_CODE, dataset_id, MODEL]
        rows.append(step(cg, "tokenize", tokenize, env, cells, root))
        rows.append(step(cg, "read_h5ad", [sys.executable, "-c", READ_H5AD_CODE, str(raw)], env, cells, root))
        rows[-1]["killed_by_cap"] = rows[-1]["returncode"] in (-9, 137) and rows[-1]["oom_kills"] > 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def embed_subset(cg: MemoryCgroup, cells: int, workdir: Path, home: Path, keep: bool) -> list[dict]:
    """Ingest, validate and embed (CPU, tiny synthetic model) a ``cells``-cell sample under the cap."""
    path, _ = make_sample(workdir, cells, 20_000)
    root = workdir / f"embed-{cells}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = environment(root, home)
    rows = []
    try:
        rows.append(step(cg, "ingest", [str(BIN / "sclake"), "ingest", str(path), "--json"], env, cells, root))
        dataset_id = json.loads(rows[-1]["stdout"])["dataset_id"]
        validate = [str(BIN / "sclake"), "validate", dataset_id, "--no-quarantine", "--model", MODEL]
        rows.append(step(cg, "validate", validate, env, cells, root))
        embed = [str(BIN / "sclake"), "embed", dataset_id, "--model", MODEL, "--device", "cpu", "--json"]
        rows.append(step(cg, "embed", embed, env, cells, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not keep:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
    return rows


def ratios(base: list[dict], large: list[dict]) -> dict[str, Any]:
    """Per step: large cells/s over baseline cells/s, and whether it is within the tolerance (linear cost)."""
    out = {}
    for b, big in zip(base, large, strict=False):
        if b["step"] == "read_h5ad" or not (b["cells_per_second"] and big["cells_per_second"]):
            continue
        r = big["cells_per_second"] / b["cells_per_second"]
        out[b["step"]] = {"ratio": round(r, 3), "linear": r >= 1 - LINEAR_TOLERANCE}
    return out


def cut_sample(source: Path, workdir: Path, cells: int) -> tuple[Path, dict]:
    """The first ``cells`` cells of the ``sclake sample`` file ``source``, streamed into a new ``.h5ad``."""
    import h5py
    import scipy.sparse as sp
    from anndata.io import read_elem

    from pipelines.h5ad_writer import StreamingH5adWriter

    path = workdir / f"cut-{cells}-of-{source.name}"
    with h5py.File(source, "r") as f:
        obs, var, x = read_elem(f["obs"]), read_elem(f["var"]), f["X"]
        if cells > len(obs):
            raise SystemExit(f"{source} holds {len(obs):,} cells, fewer than {cells:,}")
        obs = obs.iloc[:cells]
        indptr = x["indptr"][: cells + 1]
        with StreamingH5adWriter(path, obs, var) as out:
            for a in range(0, cells, 16384):
                b = min(a + 16384, cells)
                lo, hi = int(indptr[a]), int(indptr[b])
                block = (x["data"][lo:hi], x["indices"][lo:hi], indptr[a : b + 1] - lo)
                out.append(sp.csr_matrix(block, shape=(b - a, len(var))))
    return path, {"cut_from": str(source)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1_000_000, help="Cells of the large sample.")
    ap.add_argument("--baseline", type=int, default=200_000, help="Cells of the baseline sample.")
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--subset", type=int, default=20_000, help="Cells of the sample embedded on CPU.")
    ap.add_argument("--limit", default="2GiB", help="Memory cap of every step (the cgroup's limit).")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-scale"))
    ap.add_argument("--keep", action="store_true", help="Keep the samples for the next run.")
    ap.add_argument(
        "--source", type=Path, help="A `sclake sample` file made beforehand: both sizes are its first cells."
    )
    args = ap.parse_args()
    limit = parse_bytes(args.limit)
    args.workdir.mkdir(parents=True, exist_ok=True)
    home = args.workdir / "home"
    m = run_measured([str(BIN / "sclake"), "models", "synthesize", MODEL, "--tiny"], env=environment(home, home))
    if m.returncode:
        raise SystemExit(f"sclake models synthesize failed:\n{m.stderr[-3000:]}")
    sizes, steps = [], {}
    samples = {}
    if args.source:  # cut every size first, then drop the source: the disk then holds only what each run needs
        samples = {cells: cut_sample(args.source, args.workdir, cells) for cells in (args.baseline, args.cells)}
        if not args.keep and args.source.resolve().parent == args.workdir.resolve():
            args.source.unlink()
    with MemoryCgroup(f"sclake-scale-{os.getpid()}", limit) as cg:
        print(f"memory cap {gib(limit)} ({cg.describe()})", flush=True)
        for cells in (args.baseline, args.cells):
            path, sample_info = samples.get(cells) or make_sample(args.workdir, cells, args.genes)
            nnz, nbytes = count_bytes(path)
            size = {"cells": cells, "genes": args.genes, "nnz": nnz, "count_bytes": nbytes}
            size.update(file_bytes=path.stat().st_size, sample=sample_info)
            print(f"{cells:,} cells: {gib(nbytes)} of count data, file {gib(size['file_bytes'])}", flush=True)
            steps[cells] = pipeline(cg, path, cells, args.workdir, home, drop_sample=not args.keep)
            sizes.append(size)
        report(args, limit, sizes, steps, [])  # written now too, in case the embedding is interrupted
        subset = embed_subset(cg, args.subset, args.workdir, home, args.keep)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    report(args, limit, sizes, steps, subset)


def report(args: argparse.Namespace, limit: int, sizes: list, steps: dict[int, list], subset: list) -> None:
    """Print the summary and write ``benchmarks/results/scale.json``."""

    def plain(group: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "stdout"} for r in group]

    by_size = {cells: plain(group) for cells, group in steps.items()}
    rows = [r for group in [*by_size.values(), plain(subset)] for r in group]
    large = by_size[args.cells]
    summary = {
        "cells_per_second_large_over_baseline": ratios(by_size[args.baseline], large),
        "peak_rss_tree_bytes_large": {r["step"]: r["peak_rss_tree_bytes"] for r in large},
        "all_under_cap": all(r["returncode"] == 0 for r in rows if r["step"] != "read_h5ad"),
        "read_h5ad_killed_by_cap": all(r.get("killed_by_cap") for r in rows if r["step"] == "read_h5ad"),
    }
    out = write_result(
        "scale",
        {
            "benchmark": "ingest, validate, tokenize under a memory cgroup; embed a subset on CPU (tiny model)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "memory_limit_bytes": limit,
            "sizes": sizes,
            "steps": {str(k): v for k, v in by_size.items()},
            "embed_subset": plain(subset),
            "summary": summary,
        },
    )
    print(json.dumps(summary, indent=2), f"\nresult: {out}", flush=True)


if __name__ == "__main__":
    main()
