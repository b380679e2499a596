"""Benchmark: sclake's engine against Helical's own loop on one GPU, same model files and cells.

One process, on the machine with the GPU, in this order:

* the GPU's bf16 and fp16 matmul peak through torch (8192³ products): the yardstick of the
  model FLOP shares (MFU), beside the card's nominal dense peak where it is known;
* model files of the real architecture with random weights (``sclake models synthesize``)
  and a synthetic sample of ``--cells`` cells (``sclake sample``), read with anndata;
* Helical 2.2.0's own path: ``Geneformer.process_data`` on the AnnData, then
  ``get_embeddings`` on ``cuda`` (its loop: fixed ``batch_size``, padding to the longest
  cell of each batch, fp16 autocast, the masked-LM model with every hidden state);
* sclake's engine on the same cells, tokenised by sclake (the same genes as Helical's, in the
  same order up to genes of equal value): ``Embedder.embed`` part by part (``part_cells``),
  bf16, length buckets under the profile's GPU token budget;
* a short warm-up of each path first (CUDA context, cuBLAS/cuDNN handles, kernels);
* cells/s of each inference loop (wall time, synchronised), model FLOP/s from the cells' real
  token counts as a share of the measured and the nominal peak, peak GPU memory of each loop
  (``torch.cuda.max_memory_allocated``), and the cosine similarity of the embeddings: sclake
  bf16 to Helical, and sclake bf16 to sclake fp32 on ``--fp32-cells`` cells.

The same script runs on a CPU (``--device cpu``: fp32, small sizes) so that it is tested
where there is no GPU (``tests/test_gpu_benchmark.py``).

The GPU machine needs torch, transformers, numpy, pandas, scipy, h5py, pyarrow, PyYAML and
psutil, plus the packages listed by ``benchmarks/gpu_carry.py``, which downloads them as
wheels for that machine's Python (it has no network)::

    .venv/bin/python benchmarks/gpu_carry.py                  # here: build/gpu-carry/wheels
    # there, from the repository root:
    python3 -m pip install --no-index --no-deps --target build/gpu-carry/site build/gpu-carry/wheels/*.whl
    PYTHONPATH=build/gpu-carry/site python3 benchmarks/gpu_embed.py --cells 10000

prints one JSON line and writes ``benchmarks/results/gpu_embed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.matmul_peak import encoder_flops  # noqa: E402

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets, bf16 = fp16.
NOMINAL_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0, "L4": 121.0}
TARGET_CELLS = 10_000


def settings_for(workdir: Path):
    from pipelines.settings import Settings

    return Settings(
        home=workdir / "home",
        lake_uri=f"file://{workdir / 'lake'}",
        models_dir=workdir / "models",
        pushgateway_url=None,
    )


def gpu_peak(device: str, dtype_name: str, n: int = 8192, reps: int = 10) -> float | None:
    """Best TFLOP/s of ``n``³ products of ``dtype_name`` on ``device`` (``None`` on a CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def nominal_peak(device: str) -> float | None:
    """The card's data-sheet dense bf16 TFLOP/s, when its name is known."""
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in NOMINAL_TFLOPS.items() if k in name), None)


class Loop:
    """Times one inference loop: wall seconds (synchronised) and the device's peak memory."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")

    def run(self, fn: Any) -> tuple[Any, float, int | None]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = int(torch.cuda.max_memory_allocated()) if self.cuda else None
        return out, seconds, peak


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Model files, the sample, Helical's model and dataset, and sclake's tokens of the same cells."""
    import anndata as ad

    from pipelines.embed.tokenizer import Vocabulary, plan_genes, rank_value_encode
    from pipelines.models import load_geneformer, model_files, synthesize
    from pipelines.sample import write_sample

    settings = settings_for(args.workdir)
    synthesize(settings, args.model, tiny=args.tiny)
    files = model_files(settings, args.model)
    t0 = time.perf_counter()
    path = write_sample(args.workdir / "sample.h5ad", cells=args.cells, seed=args.seed)
    adata = ad.read_h5ad(path)
    adata.var["ensembl_id"] = adata.var_names
    sample_s = time.perf_counter() - t0
    gf = load_geneformer(settings, args.model, device=args.device, batch_size=args.helical_batch)
    t0 = time.perf_counter()
    data = gf.process_data(adata, gene_names="ensembl_id")
    helical_tokenize_s = time.perf_counter() - t0
    vocab = Vocabulary.from_model_files(files)
    t0 = time.perf_counter()
    tokens = rank_value_encode(adata.X.tocsr(), plan_genes(list(adata.var["ensembl_id"]), vocab), vocab)
    sclake_tokenize_s = time.perf_counter() - t0
    theirs = [np.asarray(r) for r in data["input_ids"]]
    same = sum(np.array_equal(r, tokens.cell(i)) for i, r in enumerate(theirs))
    # Genes with equal values: Helical's unstable sort may order them differently (docs/embed.md).
    same_genes = sum(np.array_equal(np.sort(r), np.sort(tokens.cell(i))) for i, r in enumerate(theirs))
    return {
        "settings": settings,
        "files": files,
        "vocab": vocab,
        "gf": gf,
        "data": data,
        "tokens": tokens,
        "record": {
            "sample_s": sample_s,
            "helical_tokenize_s": helical_tokenize_s,
            "sclake_tokenize_s": sclake_tokenize_s,
            "identical_sequences": int(same),
            "same_genes_sequences": int(same_genes),
            "median_tokens_per_cell": float(np.median(np.diff(tokens.offsets))),
            "mean_tokens_per_cell": float(np.diff(tokens.offsets).mean()),
        },
    }


def embedder_for(p: dict[str, Any], device: str, precision: str):
    from pipelines.embed.engine import Embedder, EngineOptions
    from pipelines.profiles import device_kind, get_profile

    vocab = p["vocab"]
    budget = getattr(get_profile(p["files"].spec.name).token_budget, device_kind(device))
    options = EngineOptions(device=device, precision=precision, token_budget=budget)
    return Embedder(
        p["files"].model_dir,
        cls_present="<cls>" in vocab.token_dictionary,
        eos_present="<eos>" in vocab.token_dictionary,
        pad_id=vocab.pad_id,
        options=options,
    )


def sclake_embed(embedder: Any, tokens: Any, part_cells: int, cells: int | None = None) -> np.ndarray:
    """The engine over the cells part by part, as ``sclake embed`` feeds it (``part_cells`` a part)."""
    n = len(tokens) if cells is None else min(cells, len(tokens))
    out = []
    for start in range(0, n, part_cells):
        part = tokens.take(np.arange(start, min(start + part_cells, n)))
        out.append(embedder.embed(part.ids, part.offsets))
    return np.concatenate(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def loop_record(cells: int, seconds: float, peak: int | None, flops: float, peaks: dict[str, Any]) -> dict[str, Any]:
    tflops = flops / seconds / 1e12
    return {
        "cells": cells,
        "seconds": seconds,
        "cells_per_s": cells / seconds,
        "model_tflops": tflops,
        "mfu_measured_peak": tflops / peaks["measured_tflops"] if peaks.get("measured_tflops") else None,
        "mfu_nominal_peak": tflops / peaks["nominal_tflops"] if peaks.get("nominal_tflops") else None,
        "peak_gpu_memory_bytes": peak,
    }


def measure(args: argparse.Namespace, p: dict[str, Any], peaks: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, then Helical's loop and sclake's engine, timed; cosines at the end."""
    gf, data, tokens = p["gf"], p["data"], p["tokens"]
    arch = p["files"].spec.architecture(tiny=args.tiny)
    lengths = np.diff(tokens.offsets)
    flops = encoder_flops(lengths, arch["hidden_size"], arch["intermediate_size"], arch["num_layers"])
    loop = Loop(args.device)
    engine = embedder_for(p, args.device, args.precision)
    warm = min(args.warmup, len(tokens))
    sclake_embed(engine, tokens, args.part_cells, warm)
    gf.get_embeddings(data.select(range(warm)))
    helical, h_s, h_peak = loop.run(lambda: np.asarray(gf.get_embeddings(data)))
    ours, s_s, s_peak = loop.run(lambda: sclake_embed(engine, tokens, args.part_cells))
    engine.encoder = None  # free its weights before the fp32 copy
    ref_cells = min(args.fp32_cells, len(tokens))
    fp32 = sclake_embed(embedder_for(p, args.device, "fp32"), tokens, args.part_cells, ref_cells)
    to_helical, to_fp32 = cosine(ours, helical), cosine(ours[:ref_cells], fp32)
    result = {
        "helical": loop_record(len(tokens), h_s, h_peak, flops, peaks) | {"batch_size": args.helical_batch},
        "sclake": loop_record(len(tokens), s_s, s_peak, flops, peaks) | {"precision": args.precision},
        "speedup_vs_helical": h_s / s_s,
        "cosine_sclake_to_helical": {"min": float(to_helical.min()), "mean": float(to_helical.mean())},
        "cosine_sclake_to_fp32": {"min": float(to_fp32.min()), "mean": float(to_fp32.mean()), "cells": ref_cells},
        "attention_flops_share": float(4 * (lengths.astype(np.float64) ** 2).sum() * arch["hidden_size"])
        * arch["num_layers"]
        / flops,
    }
    return result


def environment(device: str) -> dict[str, Any]:
    from importlib import metadata

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    for dist in ("helical", "transformers", "anndata", "datasets", "numpy"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gf-12L-38M-i4096")
    ap.add_argument("--cells", type=int, default=TARGET_CELLS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default=None, help="sclake's precision (default: bf16 on a GPU, fp32 on a CPU)")
    ap.add_argument("--helical-batch", type=int, default=24, help="Helical's batch_size (its default is 24)")
    ap.add_argument("--part-cells", type=int, default=4096)
    ap.add_argument("--fp32-cells", type=int, default=1000, help="cells also embedded in fp32 for the cosine")
    ap.add_argument("--warmup", type=int, default=64, help="cells run once through each path before timing")
    ap.add_argument("--tiny", action="store_true", help="the small test network (tests only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_embed.json")
    args = ap.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sclake-gpu-bench-") as tmp:
        args.workdir = args.workdir or Path(tmp)
        os.environ.setdefault("SCLAKE_HOME", str(args.workdir / "home"))
        peaks = {"measured_tflops": gpu_peak(args.device, "bf16"), "nominal_tflops": nominal_peak(args.device)}
        peaks["measured_fp16_tflops"] = gpu_peak(args.device, "fp16")
        p = prepare(args)
        result = {
            "benchmark": "gpu_embed",
            "model": args.model,
            "tiny": args.tiny,
            "environment": environment(args.device),
            "peaks": peaks,
            "prepare": p["record"],
            **measure(args, p, peaks),
            "targets": {"cells_at_least": TARGET_CELLS, "met_cells": args.cells >= TARGET_CELLS},
            "total_s": time.time() - started,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
