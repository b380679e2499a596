"""Benchmark: Helical's own Geneformer path against sclake's embedding engine, same cells, same model files.

One run measures, on this machine and in this order:

* the matmul peak of torch (fp32 and bf16, all cores): the yardstick for the FLOP shares;
* per model (real architecture, synthetic weights: ``sclake models synthesize``), on the
  same cells of one ingested synthetic sample:
  - Helical 2.2.0: ``Geneformer.process_data`` + ``get_embeddings`` (fp32, CPU);
  - sclake: ``embed_dataset`` in fp32, and in bf16 (through the engine when the CPU has
    no bf16 hardware, which the resource profile then refuses for whole datasets);
* cells/s, the ratios to Helical, model FLOPs per cell from the cells' real token
  lengths, the share of the measured matmul peak reached, peak RSS of each path (each
  path runs in its own process), and the cosine similarity of the embeddings.

The result is printed and written as JSON (default ``benchmarks/results/embed.json``).

Usage::

    .venv/bin/python benchmarks/embed.py                       # gf-6L-10M-i2048, ~10 min on 2 cores
    .venv/bin/python benchmarks/embed.py --models gf-6L-10M-i2048,gf-12L-38M-i4096 --cells 120,32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"fp32_vs_helical": 3.0, "bf16_vs_helical_fp32": 8.0, "peak_rss_bytes": 1.5 * 2**30, "peak_share": 0.5}


def settings_for(workdir: Path):
    from pipelines.settings import Settings

    return Settings(
        home=workdir / "home",
        lake_uri=f"file://{workdir / 'lake'}",
        models_dir=workdir / "models",
        pushgateway_url=None,
        part_cells=512,
        shard_cells=128,
    )


def peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def matmul_peak(dtype_name: str, seconds: float = 6.0, sizes: tuple[int, ...] = (1024, 2048, 4096)) -> dict[str, Any]:
    """Best GFLOP/s of square matrix products, all threads, through torch.matmul and F.linear (MKL / oneDNN)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rates: dict[str, float] = {}
    slow: set[str] = set()
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for name, fn in (("matmul", torch.matmul), ("linear", F.linear)):
            if name in slow:  # no hardware support: larger sizes would only take minutes
                continue
            t0 = time.perf_counter()
            fn(a, b)  # warm-up
            first = time.perf_counter() - t0
            runs, start = 0, time.perf_counter()
            while runs == 0 or time.perf_counter() - start < seconds / (2 * len(sizes)):
                if first > seconds / len(sizes):  # far too slow to time further (no hardware support)
                    break
                fn(a, b)
                runs += 1
            elapsed = time.perf_counter() - start
            rate = 2 * n**3 * runs / elapsed / 1e9 if runs else 2 * n**3 / first / 1e9
            rates[f"{name}_{n}"] = round(rate, 1)
            if rate < 20:
                slow.add(name)
    return {"gflops": max(rates.values()), "by_kernel": rates, "threads": torch.get_num_threads()}


def probe() -> dict[str, Any]:
    """Load average and a quick fp32 peak, taken before each timed path (the machine is shared)."""
    return {"load_average": os.getloadavg(), "fp32_gflops": matmul_peak("fp32", seconds=2.0, sizes=(2048,))["gflops"]}


def flops_per_cell(lengths: np.ndarray, arch: dict[str, int], vocab: int) -> dict[str, float]:
    """Encoder matmul FLOPs per cell from real lengths (and the masked-LM head Helical adds)."""
    n = np.asarray(lengths, dtype=np.float64)
    h, i, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_layers"]
    linear = 2 * n * (4 * h * h + 2 * h * i)
    attention = 4 * n * n * h
    head = 2 * n * (h * h + h * vocab)
    return {
        "encoder": float((layers * (linear + attention)).mean()),
        "attention_share": float((attention.sum()) / (linear.sum() + attention.sum())),
        "mlm_head": float(head.mean()),
    }


# -- the measured paths, each in a child process --------------------------------------------------


def child_helical(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from pipelines.dataset import open_dataset
    from pipelines.lake import Lake
    from pipelines.models import load_geneformer

    torch.set_num_threads(spec["threads"])
    settings = settings_for(Path(spec["workdir"]))
    ds = open_dataset(Lake(settings), spec["dataset_id"])
    adata = ds.to_anndata()[: spec["cells"]].copy()
    adata.var["ensembl_id"] = ds.gene_ids
    gf = load_geneformer(settings, spec["model"], device="cpu", batch_size=24)
    t0 = time.perf_counter()
    data = gf.process_data(adata, gene_names="ensembl_id")
    t1 = time.perf_counter()
    emb = np.asarray(gf.get_embeddings(data))
    t2 = time.perf_counter()
    np.save(spec["out"], emb)
    return {
        "cells": int(emb.shape[0]),
        "tokenize_s": t1 - t0,
        "embed_s": t2 - t1,
        "lengths": [int(x) for x in data["length"]],
        "peak_rss_bytes": peak_rss(),
    }


def child_sclake(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from pipelines.embed import embed_dataset, tokenize_dataset
    from pipelines.profiles import bf16_supported

    torch.set_num_threads(spec["threads"])
    settings = settings_for(Path(spec["workdir"]))
    keep = {int(p): np.asarray(r, dtype=np.int64) for p, r in spec["keep"].items()}
    tok = tokenize_dataset(settings, spec["dataset_id"], spec["model"])
    if spec["precision"] == "bf16" and not bf16_supported("cpu"):
        return child_engine_bf16(spec, settings, keep, tok)
    result = embed_dataset(
        settings, spec["dataset_id"], spec["model"], device="cpu", precision=spec["precision"], keep=keep
    )
    from pipelines.lake import Lake

    lake = Lake(settings)
    embs = []
    for f in result.files:
        import pyarrow.parquet as pq

        with lake.open(f["path"], "rb") as fh:
            t = pq.read_table(fh, columns=["embedding"])
        embs.append(np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(t.num_rows, result.width))
    np.save(spec["out"], np.concatenate(embs))
    return {
        "path": "embed_dataset",
        "cells": result.rows,
        "embed_s": result.stage_seconds["embed"],
        "compute_s": result.stage_seconds["compute"],
        "tokenize_s": tok.seconds if not tok.reused else None,
        "tokenize_cells_per_s": tok.cells_per_s or None,
        "padded_tokens": result.padded_tokens,
        "tokens": result.tokens,
        "peak_rss_bytes": peak_rss(),
    }


def child_engine_bf16(spec: dict[str, Any], settings: Any, keep: dict, tok: Any) -> dict[str, Any]:
    """bf16 on a CPU without bf16 hardware: the engine itself on a few of the cells (the profile refuses it)."""
    from pipelines.embed.engine import Embedder, EngineOptions
    from pipelines.embed.tokens import read_token_part, vocabulary_for
    from pipelines.lake import PATHS, Lake
    from pipelines.models import get_spec, model_files

    lake = Lake(settings)
    vocab = vocabulary_for(settings, spec["model"])
    part = min(keep)
    tp = read_token_part(lake, PATHS.token_part(spec["dataset_id"], vocab.hash, part))
    sub = tp.tokens.take(keep[part][: spec["bf16_cells"]])
    options = EngineOptions(device="cpu", precision="bf16", token_budget=get_spec(spec["model"]).input_size * 8)
    embedder = Embedder(
        model_files(settings, spec["model"]).model_dir,
        cls_present="<cls>" in vocab.token_dictionary,
        eos_present="<eos>" in vocab.token_dictionary,
        pad_id=vocab.pad_id,
        options=options,
    )
    t0 = time.perf_counter()
    emb = embedder.embed(sub.ids, sub.offsets)
    seconds = time.perf_counter() - t0
    np.save(spec["out"], emb)
    return {
        "path": "engine (this CPU has no bf16 hardware; the resource profile refuses bf16 here)",
        "cells": len(sub),
        "embed_s": seconds,
        "compute_s": seconds,
        "tokens": int(sub.offsets[-1]),
        "peak_rss_bytes": peak_rss(),
    }


def child_tokenizers(spec: dict[str, Any]) -> dict[str, Any]:
    """Tokenizer throughput on one in-memory sample: Helical's TranscriptomeTokenizer and sclake's."""
    import anndata as ad
    from helical.models.geneformer.geneformer_tokenizer import TranscriptomeTokenizer

    from pipelines.embed.tokenizer import Vocabulary, plan_genes, rank_value_encode
    from pipelines.models import model_files
    from pipelines.sample import write_sample

    settings = settings_for(Path(spec["workdir"]))
    files = model_files(settings, spec["model"])
    path = write_sample(Path(spec["workdir"]) / "tokenizer-sample.h5ad", cells=spec["cells"], seed=1)
    adata = ad.read_h5ad(path)
    adata.var["ensembl_id"] = adata.var.index
    tk = TranscriptomeTokenizer(
        model_input_size=files.spec.input_size,
        special_token=files.spec.special_token,
        gene_median_file=files.gene_medians,
        token_dictionary_file=files.token_dictionary,
        gene_mapping_file=files.gene_mapping,
    )
    t0 = time.perf_counter()
    cells, _ = tk.tokenize_anndata(adata.copy())
    ref = tk.create_dataset(cells, None)
    helical_s = time.perf_counter() - t0
    vocab = Vocabulary.from_model_files(files)
    x = adata.X.tocsr()
    t0 = time.perf_counter()
    ours = rank_value_encode(x, plan_genes(list(adata.var["ensembl_id"]), vocab), vocab)
    sclake_s = time.perf_counter() - t0
    same = sum(np.array_equal(np.asarray(r), ours.cell(i)) for i, r in enumerate(ref["input_ids"]))
    return {
        "cells": adata.n_obs,
        "helical_cells_per_s": adata.n_obs / helical_s,
        "sclake_cells_per_s": adata.n_obs / sclake_s,
        "identical_sequences": int(same),
    }


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- driver ---------------------------------------------------------------------------------------


def prepare(workdir: Path, models: list[str], cells: int, seed: int) -> tuple[str, dict[str, Any]]:
    from pipelines.dask_cluster import dask_client
    from pipelines.dataset import open_dataset
    from pipelines.ingest.run import ingest
    from pipelines.lake import Lake
    from pipelines.models import synthesize
    from pipelines.sample import write_sample

    settings = settings_for(workdir)
    for m in models:
        synthesize(settings, m)
    path = write_sample(workdir / "sample.h5ad", cells=cells, seed=seed)
    with dask_client(settings) as client:
        dataset_id = ingest(settings, str(path), client=client).dataset_id
    stats = open_dataset(Lake(settings), dataset_id).cell_stats()
    return dataset_id, {
        "cells": int(len(stats)),
        "median_genes_per_cell": float(stats["n_genes"].median()),
        "median_counts_per_cell": float(stats["total_counts"].median()),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def bench_model(model: str, n_cells: int, args: argparse.Namespace, dataset_id: str, peaks: dict) -> dict[str, Any]:
    """Helical and sclake on the same ``n_cells`` cells, alternated ``args.repeats`` times; the best run of each."""
    from pipelines.embed.tokens import vocabulary_for
    from pipelines.lake import PATHS, Lake
    from pipelines.models import get_spec

    spec_m = get_spec(model)
    settings = settings_for(args.workdir)
    lake = Lake(settings)
    from pipelines.dataset import open_dataset

    keep = {  # the first n_cells cells, by part (row numbers within each part)
        str(p.index): list(range(min(p.stop, n_cells) - p.start))
        for p in open_dataset(lake, dataset_id).parts
        if p.start < n_cells
    }
    base = {"workdir": str(args.workdir), "dataset_id": dataset_id, "model": model, "threads": args.threads}
    arch = {
        "hidden_size": spec_m.hidden_size,
        "intermediate_size": spec_m.intermediate_size,
        "num_layers": spec_m.num_layers,
    }
    # Tokens are made afresh by the first sclake run, so that its tokenisation is timed too.
    tokens = PATHS.tokens(dataset_id, vocabulary_for(settings, model).hash)
    lake.unpublish(tokens)
    lake.rm(PATHS.staging(tokens), recursive=True)
    runs: dict[str, list[dict[str, Any]]] = {"helical": [], **{f"sclake_{p}": [] for p in args.precisions}}
    for rep in range(args.repeats):
        print(f"[{model}] round {rep + 1}/{args.repeats}: Helical on {n_cells} cells ...", flush=True)
        out_file = args.workdir / f"{model}-helical.npy"
        probed = probe()
        runs["helical"].append({**run_child("helical", {**base, "cells": n_cells, "out": str(out_file)}), **probed})
        for prec in args.precisions:
            if prec != "fp32" and rep > 0:
                continue  # the slow emulated bf16 runs once
            lake.unpublish(PATHS.embeddings(model, dataset_id))
            lake.rm(PATHS.staging(PATHS.embeddings(model, dataset_id)), recursive=True)
            print(f"[{model}] round {rep + 1}/{args.repeats}: sclake {prec} ...", flush=True)
            spec = {**base, "precision": prec, "keep": keep, "bf16_cells": args.bf16_cells}
            spec["out"] = str(args.workdir / f"{model}-sclake-{prec}.npy")
            probed = probe()
            runs[f"sclake_{prec}"].append({**run_child("sclake", spec), **probed})
    peaks["fp32"]["gflops"] = max([peaks["fp32"]["gflops"]] + [r["fp32_gflops"] for v in runs.values() for r in v])
    hel_emb = np.load(args.workdir / f"{model}-helical.npy")
    best_h = min(runs["helical"], key=lambda r: r["embed_s"])
    flops = flops_per_cell(np.asarray(best_h["lengths"]), arch, spec_m.vocab_size)
    helical = {
        "cells": best_h["cells"],
        "tokenize_cells_per_s": best_h["cells"] / best_h["tokenize_s"],
        "embed_cells_per_s": best_h["cells"] / best_h["embed_s"],
        "embed_cells_per_s_runs": [r["cells"] / r["embed_s"] for r in runs["helical"]],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs["helical"]),
        "median_tokens": float(np.median(best_h["lengths"])),
        "model_gflops": best_h["cells"] / best_h["embed_s"] * (flops["encoder"] + flops["mlm_head"]) / 1e9,
        "load_average_at_start": [r["load_average"] for r in runs["helical"]],
    }
    out: dict[str, Any] = {"model": model, "architecture": arch, "flops_per_cell": flops, "helical": helical}
    for prec in args.precisions:
        done = runs[f"sclake_{prec}"]
        best = min(done, key=lambda r: r["embed_s"] / r["cells"])
        emb = np.load(args.workdir / f"{model}-sclake-{prec}.npy")
        cps = best["cells"] / best["compute_s"]
        gflops = cps * flops["encoder"] / 1e9
        tokenized = [r for r in done if r.get("tokenize_cells_per_s")]
        out[f"sclake_{prec}"] = {
            "path": best["path"],
            "cells": best["cells"],
            "cells_per_s": best["cells"] / best["embed_s"],
            "cells_per_s_runs": [r["cells"] / r["embed_s"] for r in done],
            "compute_cells_per_s": cps,
            "vs_helical_fp32": best["cells"] / best["embed_s"] / helical["embed_cells_per_s"],
            "tokens": best["tokens"],
            "padded_tokens": best.get("padded_tokens"),
            "tokenize_cells_per_s": tokenized[0]["tokenize_cells_per_s"] if tokenized else None,
            "model_gflops": gflops,
            "share_of_matmul_peak": gflops / peaks[prec]["gflops"] if peaks[prec]["gflops"] else None,
            "share_of_fp32_matmul_peak": gflops / peaks["fp32"]["gflops"],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in done),
            "cosine_vs_helical_min": float(cosine(emb, hel_emb[: len(emb)]).min()),
            "cosine_vs_helical_mean": float(cosine(emb, hel_emb[: len(emb)]).mean()),
            "load_average_at_start": [r["load_average"] for r in done],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gf-6L-10M-i2048", help="comma-separated model names")
    parser.add_argument("--cells", default="120", help="cells per model (comma-separated, one per model)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--bf16-cells", type=int, default=4, help="cells for bf16 on CPUs without bf16 hardware")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench-embed"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-cells", type=int, default=2000, help="cells of the tokenizer comparison")
    parser.add_argument("--repeats", type=int, default=2, help="Helical and sclake fp32 runs, alternated; best kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = {"helical": child_helical, "sclake": child_sclake, "tokenizers": child_tokenizers}[args.child]
        print(json.dumps(fn(json.loads(args.spec))))
        return
    import torch

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    counts = [int(c) for c in args.cells.split(",")]
    counts += [counts[-1]] * (len(models) - len(counts))
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    print(f"preparing {max(counts)} cells and {models} in {args.workdir} ...", flush=True)
    dataset_id, data = prepare(args.workdir, models, max(counts), args.seed)
    peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
    print(f"matmul peak: fp32 {peaks['fp32']['gflops']} GFLOP/s, bf16 {peaks['bf16']['gflops']} GFLOP/s", flush=True)
    print(f"tokenizers on {args.tokenizer_cells} cells ...", flush=True)
    tok_spec = {"workdir": str(args.workdir), "model": models[0], "cells": args.tokenizer_cells}
    tokenizers = run_child("tokenizers", tok_spec)
    results = [bench_model(m, n, args, dataset_id, peaks) for m, n in zip(models, counts, strict=True)]
    from pipelines.profiles import bf16_supported

    report = {
        "benchmark": "embed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "threads": args.threads,
            "cpu_bf16_hardware": bf16_supported("cpu"),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "versions": {p: _version(p) for p in ("torch", "helical", "transformers", "numpy", "sclake")},
        "data": {**data, "dataset_id": dataset_id},
        "matmul_peak": peaks,
        "tokenizers": tokenizers,
        "models": results,
        "targets": TARGETS,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_summary(report)
    print(f"written to {args.out}")


def print_summary(report: dict[str, Any]) -> None:
    print(
        f"\nmatmul peak fp32 {report['matmul_peak']['fp32']['gflops']} / bf16 {report['matmul_peak']['bf16']['gflops']}"
    )
    for r in report["models"]:
        h = r["helical"]
        gflop = r["flops_per_cell"]["encoder"] / 1e9
        print(f"{r['model']}: {gflop:.1f} GFLOP/cell (median {h['median_tokens']:.0f} tokens)")
        print(f"  helical fp32: {h['embed_cells_per_s']:.2f} cells/s, peak RSS {h['peak_rss_bytes'] / 2**30:.2f} GiB")
        for key in ("sclake_fp32", "sclake_bf16"):
            if key in r:
                s = r[key]
                share = s["share_of_matmul_peak"]
                if key == "sclake_bf16" and not report["machine"]["cpu_bf16_hardware"]:
                    share = s["share_of_fp32_matmul_peak"]  # bf16 is computed through fp32 units here
                print(
                    f"  {key}: {s['cells_per_s']:.2f} cells/s ({s['vs_helical_fp32']:.1f}x Helical), "
                    f"{s['model_gflops']:.0f} GFLOP/s = {100 * share:.0f}% of the matmul peak, "
                    f"peak RSS {s['peak_rss_bytes'] / 2**30:.2f} GiB, cos >= {s['cosine_vs_helical_min']:.5f}"
                )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
