"""Benchmark: this CPU's matmul peak through torch (fp32, bf16), and which oneDNN kernels compute bf16 here.

The embedding benchmark (``benchmarks/embed.py``) reports the model FLOP/s of each run as a
share of this peak (MFU-style): the peak is the best rate torch reaches on large square
products (``torch.matmul`` and ``F.linear``, all threads), the model FLOPs are counted from
the encoder's layers, width, intermediate size and the cells' real token counts.

The oneDNN check runs a short bf16 embedding (random tokens through the engine's encoder)
in a child process with oneDNN's verbose mode on and counts the primitives oneDNN executed, by
implementation: on a CPU with AVX512-BF16 the matmuls show up as ``brg_matmul:avx512_core_bf16``
(``..._amx`` with AMX); on a CPU without bf16 hardware torch does not hand bf16 matmuls to
oneDNN at all and none show up (torch emulates bf16 through fp32).

Usage::

    .venv/bin/python benchmarks/matmul_peak.py [--seconds 6] [--model-dir DIR]

prints one JSON line and writes ``benchmarks/results/matmul_peak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLOW_GFLOPS = 20.0  # below this a dtype has no hardware support: larger sizes would only take minutes


def matmul_peak(dtype_name: str, seconds: float = 6.0, sizes: tuple[int, ...] = (1024, 2048, 4096)) -> dict[str, Any]:
    """Best GFLOP/s of square matrix products of ``dtype_name`` (``fp32``/``bf16``), all of torch's threads.

    Returns
    -------
    dict
        ``gflops`` (the best rate), ``by_kernel`` (``matmul_<n>`` / ``linear_<n>``: GFLOP/s),
        ``threads``.
    """
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rates: dict[str, float] = {}
    slow: set[str] = set()
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for name, fn in (("matmul", torch.matmul), ("linear", F.linear)):
            if name in slow:
                continue
            t0 = time.perf_counter()
            fn(a, b)  # warm-up
            first = time.perf_counter() - t0
            runs, start = 0, time.perf_counter()
            while first <= seconds / len(sizes) and (
                runs == 0 or time.perf_counter() - start < seconds / (2 * len(sizes))
            ):
                fn(a, b)
                runs += 1
            elapsed = time.perf_counter() - start
            rate = 2 * n**3 * runs / elapsed / 1e9 if runs else 2 * n**3 / first / 1e9
            rates[f"{name}_{n}"] = round(rate, 1)
            if rate < SLOW_GFLOPS:
                slow.add(name)
    return {"gflops": max(rates.values()), "by_kernel": rates, "threads": torch.get_num_threads()}


def encoder_flops(lengths: Any, hidden: int, intermediate: int, layers: int) -> float:
    """Matmul FLOPs of a BERT encoder over cells of the given token ``lengths`` (each cell attends to itself).

    Per layer and cell of ``n`` tokens: ``2n(4h² + 2hi)`` in the linear layers (Q, K, V, output;
    the two feed-forward layers) and ``4n²h`` in attention (QKᵀ and the product with V).
    """
    import numpy as np

    n = np.asarray(lengths, dtype=np.float64)
    return float(layers * (2 * n * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * n * n * hidden).sum())


def share(gflops: float | None, peak: dict[str, Any] | None) -> float | None:
    """``gflops`` as a share of a measured peak (``None`` when either is missing)."""
    if not gflops or not peak or not peak.get("gflops"):
        return None
    return gflops / peak["gflops"]


# -- the oneDNN check ------------------------------------------------------------------------------


def _verbose_child(model_dir: str, precision: str, cells: int, tokens: int) -> None:
    """In the child: embed ``cells`` cells of ``tokens`` random tokens each with the engine's encoder."""
    import numpy as np
    import torch

    from pipelines.embed.encoder import load_encoder

    enc = load_encoder(model_dir, precision=precision)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(4, enc.cfg.vocab_size, size=cells * tokens))
    offsets = torch.arange(0, cells * tokens + 1, tokens)
    # torch's bundled oneDNN prints only inside this context (ONEDNN_VERBOSE alone is not enough)
    with torch.inference_mode(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        enc.forward_packed(ids, offsets)


def parse_onednn_verbose(text: str) -> dict[str, Any]:
    """Executed oneDNN primitives in ``ONEDNN_VERBOSE`` output, counted by ``primitive implementation``.

    ``bf16_kernels`` counts those whose implementation computes bf16 in hardware (an
    ``avx512_core_bf16``, ``avx512_core_amx`` or ``avx2_vnni_2`` kernel) on bf16 data.
    """
    by_kernel: Counter[str] = Counter()
    bf16_hw = 0
    for line in text.splitlines():
        fields = line.split(",")
        if not line.startswith(("onednn_verbose", "dnnl_verbose")) or "exec" not in fields:
            continue
        at = fields.index("exec")
        kind, impl = fields[at + 2], fields[at + 3]  # exec, engine, primitive kind, implementation
        by_kernel[f"{kind} {impl}"] += 1
        if any(isa in impl for isa in ("bf16", "amx", "avx2_vnni_2")) and ":bf16" in ",".join(fields[at + 4 :]):
            bf16_hw += 1
    return {"executed": sum(by_kernel.values()), "by_kernel": dict(by_kernel), "bf16_kernels": bf16_hw}


def onednn_check(model_dir: str | Path, precision: str = "bf16", cells: int = 2, tokens: int = 256) -> dict[str, Any]:
    """Run a short embedding with oneDNN's verbose mode on, in a child process; what oneDNN executed, and a verdict."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    cmd = [sys.executable, __file__, "--verbose-child", str(model_dir), precision, str(cells), str(tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the oneDNN check failed:\n{out.stderr[-3000:]}")
    found = parse_onednn_verbose(out.stdout)
    if found["bf16_kernels"]:
        verdict = f"oneDNN computed {precision} in hardware ({found['bf16_kernels']} bf16 kernel runs)"
    elif found["executed"]:
        verdict = f"oneDNN ran {found['executed']} primitives, none a bf16 hardware kernel"
    else:
        verdict = f"oneDNN ran no primitive: torch computed the {precision} matmuls itself"
    return {"precision": precision, "cells": cells, "tokens_per_cell": tokens, **found, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per dtype")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--model-dir", help="a Geneformer model folder for the oneDNN check (default: no check)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matmul_peak.json")
    parser.add_argument("--verbose-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verbose_child:
        model_dir, precision, cells, tokens = args.verbose_child
        _verbose_child(model_dir, precision, int(cells), int(tokens))
        return
    import torch

    from pipelines.profiles import cpu_bf16_support

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "matmul_peak",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu_bf16": cpu_bf16_support().__dict__,
        "peaks": {p: matmul_peak(p, args.seconds) for p in ("fp32", "bf16")},
    }
    if args.model_dir:
        report["onednn_bf16"] = onednn_check(args.model_dir)
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
