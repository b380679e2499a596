"""Benchmark: Helical's own Geneformer path against sclake's embedding step, end to end, same cells and model files.

One run measures, on this machine and in this order:

* the matmul peak of torch (fp32 and bf16, all cores; ``benchmarks/matmul_peak.py``): the
  yardstick of the FLOP shares, and which oneDNN kernels compute a short bf16 embedding;
* per model (real architecture, synthetic weights: ``sclake models synthesize``), on the
  same cells of one synthetic sample, each path in its own process, timed **from the
  process's start**:
  - Helical 2.2.0, fp32 on CPU: ``anndata.read_h5ad`` of the sample, ``Geneformer.process_data``
    + ``get_embeddings`` (until the embeddings are returned);
  - sclake fp32: ``embed_dataset`` on the ingested dataset (tokenisation, model loading,
    inference, Parquet parts written and the folder published);
  - sclake bf16: the same where the CPU has bf16 hardware (the profile's CPU default there);
    elsewhere the profile refuses bf16, and the engine alone runs a few cells (emulated
    bf16, for the numbers only);
* cells/s end to end and of the inference alone, the ratios to Helical's fp32 measured in
  the same run, model FLOP/s (from the cells' real token lengths) as a share of the matmul
  peak of each precision, peak RSS of each process, the cosine similarity of the
  embeddings (fp32 to Helical, bf16 to fp32), and the load average before each run.

Helical and sclake fp32 are alternated ``--repeats`` times and the best run of each is kept.
The result is printed and written as JSON (default ``benchmarks/results/embed.json``).

Usage::

    .venv/bin/python benchmarks/embed.py                       # gf-6L-10M-i2048, 120 cells
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

from benchmarks.matmul_peak import encoder_flops, matmul_peak, onednn_check, share  # noqa: E402

TARGETS = {
    "fp32_vs_helical": 5.0,
    "bf16_vs_helical_fp32": 10.0,
    "bf16_cosine_vs_fp32_min": 0.99,
    "peak_rss_bytes": 1.5 * 2**30,
}


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


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (less sensitive than wall time to a busy machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe() -> dict[str, Any]:
    """Load average and a quick fp32 peak, taken before each timed path (the machine is shared)."""
    return {"load_average": os.getloadavg(), "fp32_gflops": matmul_peak("fp32", seconds=2.0, sizes=(2048,))["gflops"]}


def flops_per_cell(lengths: np.ndarray, arch: dict[str, int], vocab: int) -> dict[str, float]:
    """Encoder matmul FLOPs per cell from real lengths (and the masked-LM head Helical adds)."""
    n = np.asarray(lengths, dtype=np.float64)
    h, layers = arch["hidden_size"], arch["num_layers"]
    encoder = encoder_flops(n, h, arch["intermediate_size"], layers)
    attention = layers * 4 * h * float((n * n).sum())  # QK^T and the product with V
    return {
        "encoder": encoder / len(n),
        "attention_share": float(attention / encoder),
        "mlm_head": float((2 * n * (h * h + h * vocab)).mean()),
    }


# -- the measured paths, each in a child process --------------------------------------------------


def _since_launch(spec: dict[str, Any]) -> float:
    """Seconds since the parent launched this process (its wall clock, same machine)."""
    return time.time() - spec["launched"]


def child_helical(spec: dict[str, Any]) -> dict[str, Any]:
    """Helical's own path, as a user runs it on the h5ad: read, ``process_data``, ``get_embeddings``."""
    started = _since_launch(spec)
    import anndata as ad
    import torch

    from pipelines.models import load_geneformer

    torch.set_num_threads(spec["threads"])
    settings = settings_for(Path(spec["workdir"]))
    t0 = time.perf_counter()
    adata = ad.read_h5ad(spec["h5ad"])[: spec["cells"]].copy()
    adata.var["ensembl_id"] = adata.var_names
    gf = load_geneformer(settings, spec["model"], device="cpu", batch_size=24)
    t1 = time.perf_counter()
    data = gf.process_data(adata, gene_names="ensembl_id")
    t2 = time.perf_counter()
    emb = np.asarray(gf.get_embeddings(data))
    t3 = time.perf_counter()
    e2e_s, cpu_s = _since_launch(spec), cpu_seconds()
    np.save(spec["out"], emb)
    return {
        "cells": int(emb.shape[0]),
        "e2e_s": e2e_s,
        "cpu_s": cpu_s,
        "interpreter_s": started,  # launch to this function: interpreter start and the script's imports
        "load_s": t1 - t0,
        "tokenize_s": t2 - t1,
        "embed_s": t3 - t2,
        "lengths": [int(x) for x in data["length"]],
        "peak_rss_bytes": peak_rss(),
    }


def child_sclake(spec: dict[str, Any]) -> dict[str, Any]:
    """``embed_dataset`` on the ingested dataset: tokens, model, inference, Parquet published."""
    import torch

    from pipelines.embed import embed_dataset
    from pipelines.profiles import bf16_supported

    torch.set_num_threads(spec["threads"])
    settings = settings_for(Path(spec["workdir"]))
    keep = {int(p): np.asarray(r, dtype=np.int64) for p, r in spec["keep"].items()}
    if spec["precision"] == "bf16" and not bf16_supported("cpu"):
        return child_engine_bf16(spec, settings, keep)
    result = embed_dataset(
        settings, spec["dataset_id"], spec["model"], device="cpu", precision=spec["precision"], keep=keep
    )
    e2e_s, cpu_s = _since_launch(spec), cpu_seconds()
    np.save(spec["out"], _read_published(settings, result))
    return {
        "path": "embed_dataset",
        "precision": result.precision,
        "cells": result.rows,
        "e2e_s": e2e_s,
        "cpu_s": cpu_s,
        "embed_s": result.stage_seconds["embed"],
        "compute_s": result.stage_seconds["compute"],
        "tokenize_s": result.stage_seconds["tokenize"],
        "padded_tokens": result.padded_tokens,
        "tokens": result.tokens,
        "attention": result.attention,
        "peak_rss_bytes": peak_rss(),
    }


def _read_published(settings: Any, result: Any) -> np.ndarray:
    """The embeddings of a published run, parts in order."""
    import pyarrow.parquet as pq

    from pipelines.lake import Lake

    lake = Lake(settings)
    embs = []
    for f in result.files:
        with lake.open(f["path"], "rb") as fh:
            t = pq.read_table(fh, columns=["embedding"])
        embs.append(np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(t.num_rows, result.width))
    return np.concatenate(embs)


def child_engine_bf16(spec: dict[str, Any], settings: Any, keep: dict) -> dict[str, Any]:
    """bf16 on a CPU without bf16 hardware: the engine itself on a few of the cells (the profile refuses it)."""
    from pipelines.embed import tokenize_dataset
    from pipelines.embed.engine import Embedder, EngineOptions
    from pipelines.embed.tokens import read_token_part, vocabulary_for
    from pipelines.lake import PATHS, Lake
    from pipelines.models import model_files
    from pipelines.profiles import get_profile

    tokenize_dataset(settings, spec["dataset_id"], spec["model"])
    vocab = vocabulary_for(settings, spec["model"])
    part = min(keep)
    tp = read_token_part(Lake(settings), PATHS.token_part(spec["dataset_id"], vocab.hash, part))
    sub = tp.tokens.take(keep[part][: spec["bf16_cells"]])
    options = EngineOptions(device="cpu", precision="bf16", token_budget=get_profile(spec["model"]).token_budget.cpu)
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
        "path": "engine on a few cells (this CPU has no bf16 hardware: the resource profile refuses bf16 here)",
        "precision": "bf16",
        "cells": len(sub),
        "e2e_s": None,
        "cpu_s": None,
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
    """Run one measured path in a fresh Python process; ``spec["launched"]`` is its start on the wall clock."""
    spec = {**spec, "launched": time.time()}
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
        "h5ad": str(path),
        "cells": int(len(stats)),
        "median_genes_per_cell": float(stats["n_genes"].median()),
        "median_counts_per_cell": float(stats["total_counts"].median()),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _fresh(settings: Any, dataset_id: str, model: str) -> None:
    """Remove the published tokens and embeddings, so that the next sclake run makes both."""
    from pipelines.embed.tokens import vocabulary_for
    from pipelines.lake import PATHS, Lake

    lake = Lake(settings)
    for final in (PATHS.tokens(dataset_id, vocabulary_for(settings, model).hash), PATHS.embeddings(model, dataset_id)):
        lake.unpublish(final)
        lake.rm(PATHS.staging(final), recursive=True)


def run_rounds(model: str, n_cells: int, args: argparse.Namespace, dataset_id: str, h5ad: str) -> dict[str, list]:
    """Helical and sclake on the same ``n_cells`` cells, alternated ``args.repeats`` times: every run's record."""
    from pipelines.dataset import open_dataset
    from pipelines.lake import Lake

    settings = settings_for(args.workdir)
    keep = {  # the first n_cells cells, by part (row numbers within each part)
        str(p.index): list(range(min(p.stop, n_cells) - p.start))
        for p in open_dataset(Lake(settings), dataset_id).parts
        if p.start < n_cells
    }
    base = {"workdir": str(args.workdir), "dataset_id": dataset_id, "model": model, "threads": args.threads}
    runs: dict[str, list[dict[str, Any]]] = {"helical": [], **{f"sclake_{p}": [] for p in args.precisions}}
    for rep in range(args.repeats):
        print(f"[{model}] round {rep + 1}/{args.repeats}: Helical on {n_cells} cells ...", flush=True)
        spec = {**base, "cells": n_cells, "h5ad": h5ad, "out": str(args.workdir / f"{model}-helical.npy")}
        probed = probe()
        runs["helical"].append({**run_child("helical", spec), **probed})
        for prec in args.precisions:
            _fresh(settings, dataset_id, model)
            print(f"[{model}] round {rep + 1}/{args.repeats}: sclake {prec} ...", flush=True)
            spec = {**base, "precision": prec, "keep": keep, "bf16_cells": args.bf16_cells}
            spec["out"] = str(args.workdir / f"{model}-sclake-{prec}-{rep}.npy")
            probed = probe()
            runs[f"sclake_{prec}"].append({**run_child("sclake", spec), **probed, "npy": spec["out"]})
    return runs


def summarise_helical(runs: list[dict[str, Any]], flops: dict[str, float]) -> dict[str, Any]:
    best = min(runs, key=lambda r: r["e2e_s"])
    return {
        "cells": best["cells"],
        "cells_per_s": best["cells"] / best["e2e_s"],
        "cells_per_s_runs": [r["cells"] / r["e2e_s"] for r in runs],
        "e2e_s": best["e2e_s"],
        "cpu_s_per_cell": min(r["cpu_s"] / r["cells"] for r in runs),
        "load_s": best["load_s"],
        "tokenize_cells_per_s": best["cells"] / best["tokenize_s"],
        "embed_cells_per_s": best["cells"] / best["embed_s"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "median_tokens": float(np.median(best["lengths"])),
        "model_gflops": best["cells"] / best["embed_s"] * (flops["encoder"] + flops["mlm_head"]) / 1e9,
        "load_average_at_start": [r["load_average"] for r in runs],
    }


def summarise_sclake(
    runs: list[dict[str, Any]], helical: dict[str, Any], flops: dict[str, float], peaks: dict, refs: dict
) -> dict[str, Any]:
    """One precision's best run: speeds, ratios to Helical fp32, FLOP shares, memory and cosines."""
    best = min(runs, key=lambda r: (r["e2e_s"] or r["compute_s"]) / r["cells"])
    emb = np.load(best["npy"])
    cps = best["cells"] / best["compute_s"]
    gflops = cps * flops["encoder"] / 1e9
    e2e = best["cells"] / best["e2e_s"] if best["e2e_s"] else None
    cpu_per_cell = min(r["cpu_s"] / r["cells"] for r in runs) if best["cpu_s"] else None
    peak_name = best["precision"] if best["path"] == "embed_dataset" else "fp32"
    out = {
        "path": best["path"],
        "precision": best["precision"],
        "cells": best["cells"],
        "cells_per_s": e2e,
        "cells_per_s_runs": [r["cells"] / r["e2e_s"] for r in runs if r["e2e_s"]],
        "vs_helical_fp32": e2e / helical["cells_per_s"] if e2e else None,
        "cpu_s_per_cell": cpu_per_cell,
        "vs_helical_fp32_cpu_time": helical["cpu_s_per_cell"] / cpu_per_cell if cpu_per_cell else None,
        "compute_cells_per_s": cps,
        "compute_vs_helical_fp32_embed": cps / helical["embed_cells_per_s"],
        "tokens": best["tokens"],
        "padded_tokens": best.get("padded_tokens"),
        "attention": best.get("attention"),
        "model_gflops": gflops,
        # emulated bf16 runs on the fp32 units: the fp32 peak is its yardstick
        "matmul_peak_used": peak_name,
        "share_of_matmul_peak": share(gflops, peaks[peak_name]),
        "share_of_fp32_matmul_peak": share(gflops, peaks["fp32"]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "load_average_at_start": [r["load_average"] for r in runs],
    }
    for name, ref in refs.items():
        cos = cosine(emb, ref[: len(emb)])
        out[f"cosine_vs_{name}_min"], out[f"cosine_vs_{name}_mean"] = float(cos.min()), float(cos.mean())
    return out


def attention_kernels(spec_m: Any, length: int, threads: int) -> dict[str, Any]:
    """One cell's attention at the median length in each kind and precision, and the kind the
    engine's ``auto`` takes on this CPU: ms and GFLOP/s (``4·heads·length²·d``)."""
    import torch

    from pipelines.embed.encoder import choose_cpu_attention, time_attention
    from pipelines.profiles import bf16_supported, cpu_has_amx

    torch.set_num_threads(threads)
    heads, d = spec_m.num_heads, spec_m.hidden_size // spec_m.num_heads
    flop = 4 * heads * length**2 * d
    out: dict[str, Any] = {"length": length, "heads": heads, "head_dim": d, "amx": cpu_has_amx()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not bf16_supported("cpu"):
            continue
        seconds = time_attention(heads, d, dtype, length)
        out[name] = {
            "chosen": choose_cpu_attention(dtype, amx=out["amx"]).kind,
            "ms": {k: round(s * 1e3, 2) for k, s in seconds.items()},
            "gflops": {k: round(flop / s / 1e9, 1) for k, s in seconds.items()},
        }
    return out


def bench_model(model: str, n_cells: int, args: argparse.Namespace, dataset_id: str, data: dict, peaks: dict) -> dict:
    """Every path on ``n_cells`` cells of one model, summarised (best run of each)."""
    from pipelines.models import get_spec

    spec_m = get_spec(model)
    arch = {"hidden_size": spec_m.hidden_size, "intermediate_size": spec_m.intermediate_size}
    arch["num_layers"] = spec_m.num_layers
    runs = run_rounds(model, n_cells, args, dataset_id, data["h5ad"])
    peaks["fp32"]["gflops"] = max([peaks["fp32"]["gflops"]] + [r["fp32_gflops"] for v in runs.values() for r in v])
    best_h = min(runs["helical"], key=lambda r: r["e2e_s"])
    flops = flops_per_cell(np.asarray(best_h["lengths"]), arch, spec_m.vocab_size)
    helical = summarise_helical(runs["helical"], flops)
    refs = {"helical": np.load(args.workdir / f"{model}-helical.npy")}
    out: dict[str, Any] = {"model": model, "architecture": arch, "flops_per_cell": flops, "helical": helical}
    out["attention_kernels"] = attention_kernels(spec_m, int(np.median(best_h["lengths"])), args.threads)
    for prec in args.precisions:
        out[f"sclake_{prec}"] = summarise_sclake(runs[f"sclake_{prec}"], helical, flops, peaks, refs)
        if prec == "fp32":
            refs["fp32"] = np.load(min(runs["sclake_fp32"], key=lambda r: r["e2e_s"])["npy"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gf-6L-10M-i2048", help="comma-separated model names")
    parser.add_argument("--cells", default="120", help="cells per model (comma-separated, one per model)")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 first: bf16 is compared with it")
    parser.add_argument("--bf16-cells", type=int, default=4, help="cells for bf16 on CPUs without bf16 hardware")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench-embed"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-cells", type=int, default=2000, help="cells of the tokenizer comparison")
    parser.add_argument("--repeats", type=int, default=2, help="Helical and sclake runs, alternated; best kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = {"helical": child_helical, "sclake": child_sclake, "tokenizers": child_tokenizers}[args.child]
        print(json.dumps(fn(json.loads(args.spec))))
        return
    import torch

    from pipelines.models import model_files
    from pipelines.profiles import cpu_bf16_support

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    counts = [int(c) for c in args.cells.split(",")]
    counts += [counts[-1]] * (len(models) - len(counts))
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    print(f"preparing {max(counts)} cells and {models} in {args.workdir} ...", flush=True)
    dataset_id, data = prepare(args.workdir, models, max(counts), args.seed)
    peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
    print(f"matmul peak: fp32 {peaks['fp32']['gflops']} GFLOP/s, bf16 {peaks['bf16']['gflops']} GFLOP/s", flush=True)
    onednn = onednn_check(model_files(settings_for(args.workdir), models[0]).model_dir)
    print(f"oneDNN check: {onednn['verdict']}", flush=True)
    print(f"tokenizers on {args.tokenizer_cells} cells ...", flush=True)
    tok_spec = {"workdir": str(args.workdir), "model": models[0], "cells": args.tokenizer_cells}
    tokenizers = run_child("tokenizers", tok_spec)
    results = [bench_model(m, n, args, dataset_id, data, peaks) for m, n in zip(models, counts, strict=True)]
    report = {
        "benchmark": "embed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "threads": args.threads,
            "cpu_bf16": cpu_bf16_support().__dict__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "versions": {p: _version(p) for p in ("torch", "helical", "transformers", "numpy", "sclake")},
        "data": {**data, "dataset_id": dataset_id},
        "matmul_peak": peaks,
        "onednn_bf16": onednn,
        "tokenizers": tokenizers,
        "models": results,
        "targets": TARGETS,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_summary(report)
    print(f"written to {args.out}")


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def print_summary(report: dict[str, Any]) -> None:
    peaks = report["matmul_peak"]
    print(f"\nmatmul peak fp32 {peaks['fp32']['gflops']} / bf16 {peaks['bf16']['gflops']} GFLOP/s")
    print(f"oneDNN bf16 check: {report['onednn_bf16']['verdict']}; CPU bf16: {report['machine']['cpu_bf16']['reason']}")
    for r in report["models"]:
        h = r["helical"]
        gflop = r["flops_per_cell"]["encoder"] / 1e9
        print(f"{r['model']}: {gflop:.1f} GFLOP/cell (median {h['median_tokens']:.0f} tokens)")
        print(
            f"  helical fp32: {h['cells_per_s']:.2f} cells/s end to end ({h['embed_cells_per_s']:.2f} in "
            f"get_embeddings), peak RSS {h['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
        for key in ("sclake_fp32", "sclake_bf16"):
            if key not in r:
                continue
            s = r[key]
            cos = ", ".join(
                f"cos vs {n} >= {s[k]:.6f}" for n in ("helical", "fp32") if (k := f"cosine_vs_{n}_min") in s
            )
            print(
                f"  {key}: {_fmt(s['cells_per_s'], '.2f')} cells/s end to end "
                f"({_fmt(s['vs_helical_fp32'], '.1f')}x Helical; in CPU time "
                f"{_fmt(s['vs_helical_fp32_cpu_time'], '.1f')}x), compute {s['compute_cells_per_s']:.2f} cells/s, "
                f"{s['model_gflops']:.0f} GFLOP/s = {100 * (s['share_of_matmul_peak'] or 0):.0f}% of the "
                f"{s['matmul_peak_used']} matmul peak, attention {s.get('attention')}, "
                f"peak RSS {s['peak_rss_bytes'] / 2**30:.2f} GiB, {cos}"
            )
        kernels = r["attention_kernels"]
        for prec in ("fp32", "bf16"):
            if prec in kernels:
                k = kernels[prec]
                print(f"  attention {prec}, one {kernels['length']}-token cell: {k['ms']} ms, chosen {k['chosen']}")


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
