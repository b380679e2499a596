"""Benchmark: the CPU embedding engine's memory over many batches of varied shapes.

oneDNN keeps state for every shape of matrix product it has run, so a process whose
batches each bring a new token count (and, for bf16 attention in blocks, every cell a new
length) grows with the number of shapes, not the number of cells. The encoder therefore
rounds a packed batch's rows up to a multiple of ``PACKED_ROWS`` and pads the attention
blocks' keys to a multiple of ``ATTENTION_PAD`` (``pipelines/embed/encoder.py``).

This runs the encoder (``forward_packed`` and pooling, as the engine does) over ``--cells``
cells of random lengths, uniform between ``--min-length`` and the model's positions, in
the engine's batches (``plan_batches`` under ``--token-budget``), in a fresh process per
precision and per variant:

* ``rounded``: the encoder as it is;
* ``exact``: ``PACKED_ROWS`` and ``ATTENTION_PAD`` set to 1, every batch and cell its own
  shape (the engine before the rounding): the baseline, measured in the same run.

Each process's RSS is read after every batch. Reported per run: peak RSS, RSS after the
first tenth of the batches and at the end (the growth between them is what the rounding
removes), distinct row counts, cells/s. bf16 runs only where the CPU has bf16 instructions.
The result goes to ``benchmarks/results/embed_memory.json``.

Usage::

    .venv/bin/python benchmarks/embed_memory.py [--cells 1500] [--token-budget 4096] [--model gf-6L-10M-i2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import gib, write_result  # noqa: E402


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One run: the encoder over the cells in the engine's batches; RSS after every batch."""
    import psutil
    import torch

    from pipelines.embed import encoder
    from pipelines.embed.batching import plan_batches

    torch.set_num_threads(spec["threads"])
    if spec["variant"] == "exact":
        encoder.PACKED_ROWS = 1
        encoder.ATTENTION_PAD = 1
    enc = encoder.load_encoder(spec["model_dir"], precision=spec["precision"])
    rng = np.random.default_rng(spec["seed"])
    positions = enc.cfg.max_position_embeddings
    lengths = rng.integers(spec["min_length"], positions + 1, spec["cells"])
    batches = plan_batches(lengths, spec["token_budget"])
    proc = psutil.Process()
    rss, rows = [], set()
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            n = lengths[batch.rows]
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(n)]))
            ids = torch.from_numpy(rng.integers(3, enc.cfg.vocab_size, int(n.sum())))
            hidden = enc.forward_packed(ids, offsets)
            encoder.pool_packed(hidden, offsets, True, False)
            rows.add(encoder.round_up(int(n.sum()), encoder.PACKED_ROWS))
            rss.append(proc.memory_info().rss)
    seconds = time.perf_counter() - started
    tenth = max(1, len(rss) // 10)
    return {
        "precision": spec["precision"],
        "variant": spec["variant"],
        "cells": int(len(lengths)),
        "batches": len(batches),
        "distinct_row_counts": len(rows),
        "cells_per_s": len(lengths) / seconds,
        "peak_rss_bytes": max(rss),
        "rss_after_first_tenth_bytes": rss[tenth - 1],
        "rss_end_bytes": rss[-1],
        "growth_bytes": rss[-1] - rss[tenth - 1],
        "rss_every_tenth_bytes": rss[tenth - 1 :: tenth],
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"{spec['precision']} {spec['variant']} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cells", type=int, default=1500)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--min-length", type=int, default=300)
    ap.add_argument("--model", default="gf-6L-10M-i2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench-embed-memory"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from pipelines.models import model_files, synthesize
    from pipelines.profiles import bf16_supported
    from pipelines.settings import Settings

    settings = Settings(home=args.workdir / "home", models_dir=args.workdir / "models", pushgateway_url=None)
    synthesize(settings, args.model)
    model_dir = str(model_files(settings, args.model).model_dir)
    precisions = ["fp32"] + (["bf16"] if bf16_supported("cpu") else [])
    runs = []
    started = time.perf_counter()
    for precision in precisions:
        for variant in ("exact", "rounded"):
            spec = {**vars(args), "workdir": None, "child": None, "model_dir": model_dir}
            spec.update(precision=precision, variant=variant)
            print(f"{precision} {variant}: {args.cells} cells ...", flush=True)
            r = run_child(spec)
            runs.append(r)
            print(
                f"  {r['batches']} batches, {r['distinct_row_counts']} row counts, {r['cells_per_s']:.2f} cells/s, "
                f"RSS {gib(r['rss_after_first_tenth_bytes'])} after a tenth -> {gib(r['rss_end_bytes'])} at the end "
                f"(peak {gib(r['peak_rss_bytes'])})",
                flush=True,
            )
    ratios = {}
    by_key = {(r["precision"], r["variant"]): r for r in runs}
    for precision in precisions:
        exact, rounded = by_key[(precision, "exact")], by_key[(precision, "rounded")]
        ratios[precision] = {
            "peak_rss_rounded_over_exact": rounded["peak_rss_bytes"] / exact["peak_rss_bytes"],
            "cells_per_s_rounded_over_exact": rounded["cells_per_s"] / exact["cells_per_s"],
        }
    command = "benchmarks/embed_memory.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("cells", args.cells), ("token_budget", args.token_budget))
    )
    path = write_result(
        "embed_memory",
        {
            "benchmark": "CPU embedding engine: RSS over batches of varied shapes, rounded shapes against exact ones",
            "command": command,
            "model": args.model,
            "runs": runs,
            "ratios": ratios,
            "seconds": time.perf_counter() - started,
        },
    )
    print(json.dumps(ratios, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
