"""The worker image does the whole job on its own, and agrees with Helical on the host.

Runs the command of docs/deployment.md ("Running the worker image alone") on a sample:

    docker run --rm --network none -v DATA:/input:ro -v LAKE:/lake -v MODELS:/models:ro \\
        -e SCLAKE_LAKE_URI=file:///lake -e SCLAKE_MLFLOW_TRACKING_URI=sqlite:////lake/mlflow.db \\
        sclake-worker:<version>-cpu sclake run /input/x.h5ad --model MODEL

with model files of the real architecture (``sclake models synthesize``, random weights),
then embeds the same cells with Helical's own ``process_data`` + ``get_embeddings`` on the
host with the same files, and reports the per-cell cosine of the two (min, mean), the
precision the container chose, the container's wall time and cells/s, and its peak memory
(``docker stats`` sampled every second).

    uv run --frozen --no-sync python benchmarks/container_parity.py --model gf-6L-10M-i2048 --cells 500

The image must exist (``make images``). Prints one JSON object and writes it to
``benchmarks/results/container_parity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine  # noqa: E402
from pipelines import deploy  # noqa: E402
from pipelines.lake import PATHS, Lake  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

IMAGE_UID = 1000


def _memory_bytes(text: str) -> int:
    value = text.split("/")[0].strip()
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10**6, "GB": 10**9}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * units[unit])
    return 0


def run_container(name: str, args: list[str]) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """``docker run --name NAME ...``: the result, wall seconds and the peak of ``docker stats``."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            r = subprocess.run(
                ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode == 0 and r.stdout.strip():
                peak = max(peak, _memory_bytes(r.stdout.strip()))
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    t = time.perf_counter()
    sampler.start()
    r = subprocess.run(["docker", "run", "--rm", "--name", name, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return r, seconds, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gf-6L-10M-i2048")
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--image", default=deploy.WORKER_IMAGE)
    ap.add_argument("--out", type=Path, default=RESULTS / "container_parity.json")
    args = ap.parse_args()

    from pipelines.dataset import open_dataset
    from pipelines.models import load_geneformer, synthesize
    from pipelines.sample import write_sample

    work = Path(tempfile.mkdtemp(prefix="sclake-parity-"))
    models = work / "models"
    synthesize(Settings(home=work / "home", models_dir=models), args.model)
    data, lake_dir = work / "input", work / "lake"
    data.mkdir()
    lake_dir.mkdir()
    write_sample(data / "x.h5ad", cells=args.cells, genes=args.genes, seed=3)
    for folder, _, files in os.walk(work):  # the image's user reads the inputs and the models
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    user = ["--user", f"{os.getuid()}:{os.getgid()}"] if os.getuid() != 0 else []
    if os.getuid() == 0:
        os.chown(lake_dir, IMAGE_UID, IMAGE_UID)
    docker_args = [
        "--network", "none", *user,
        "-v", f"{data}:/input:ro", "-v", f"{lake_dir}:/lake", "-v", f"{models}:/models:ro",
        "-e", "SCLAKE_LAKE_URI=file:///lake", "-e", "SCLAKE_MLFLOW_TRACKING_URI=sqlite:////lake/mlflow.db",
        args.image, "sclake", "run", "/input/x.h5ad", "--model", args.model,
    ]  # fmt: skip
    r, seconds, peak = run_container(f"sclake-parity-{os.getpid()}", docker_args)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
        return 1
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    settings = Settings(home=work / "home", lake_uri=f"file://{lake_dir}", models_dir=models, pushgateway_url=None)
    lake = Lake(settings)
    dataset_id = summary["dataset_id"]
    ids, embs, meta = [], [], {}
    for rel in lake.ls(PATHS.embeddings(args.model, dataset_id), suffix=".parquet"):
        with lake.open(rel, "rb") as f:
            table = pq.read_table(f)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        ids += table.column("cell_id").to_pylist()
        width = table.schema.field("embedding").type.list_size
        flat = np.asarray(table.column("embedding").combine_chunks().flatten())
        embs.append(flat.reshape(table.num_rows, width))
    emb = np.concatenate(embs)

    ds = open_dataset(lake, dataset_id)
    adata = ds.to_anndata()
    adata.var["ensembl_id"] = ds.gene_ids
    t = time.perf_counter()
    gf = load_geneformer(settings, args.model, batch_size=32)
    ref = np.asarray(gf.get_embeddings(gf.process_data(adata.copy(), gene_names="ensembl_id")))
    helical_s = time.perf_counter() - t
    order = {cell: i for i, cell in enumerate(adata.obs_names)}
    ref = ref[[order[c] for c in ids]]
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    result = {
        "benchmark": "container_parity",
        "command": "uv run --frozen --no-sync python benchmarks/container_parity.py "
        f"--model {args.model} --cells {args.cells}",
        "image": args.image,
        "model": args.model,
        "cells": len(ids),
        "precision": sorted({v for k, v in meta.items() if k.endswith("precision")}),
        "min_cosine_vs_helical": float(cos.min()),
        "mean_cosine_vs_helical": float(cos.mean()),
        "container_seconds": round(seconds, 1),
        "container_cells_per_s": round(len(ids) / seconds, 1),
        "container_peak_memory_bytes": peak,
        "helical_host_seconds": round(helical_s, 1),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
