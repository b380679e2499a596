"""Probe: many uploads at once on the embedded stack; how many end with embeddings, and when.

Starts the embedded stack (``sclake stack up``: the S3 server, MLflow and Airflow standalone,
sensor-driven DAGs) in a fresh home, synthesizes the tiny model, writes ``--uploads`` distinct
samples and puts them into ``incoming/`` concurrently (plus one of them a second time under
another name, which must not make a sixth dataset). It then waits until every distinct
dataset has published embeddings, or ``--bound`` seconds pass, and stops the stack.

Reports embedded / total and the seconds from the uploads to the last embeddings (the same
scenario as ``tests/test_concurrent_uploads.py``, which asserts it). Prints the JSON result
and writes ``benchmarks/results/concurrent_uploads.json``.

Usage::

    .venv/bin/python benchmarks/concurrent_uploads.py [--uploads 5] [--cells 150] [--genes 1500] [--bound 900]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_result  # noqa: E402

MODEL = "gf-6L-10M-i2048"
SCLAKE = str(Path(sys.executable).with_name("sclake"))
PORTS = ("S3", "MLFLOW", "AIRFLOW", "PROMETHEUS", "PUSHGATEWAY", "NODE_EXPORTER", "AIRFLOW_EXPORTER")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--cells", type=int, default=150)
    parser.add_argument("--genes", type=int, default=1500)
    parser.add_argument("--bound", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-concurrent"))
    args = parser.parse_args()

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        SCLAKE_HOME=str(work / "home"),
        SCLAKE_MODELS_DIR=str(work / "models"),
        SCLAKE_MODELS=MODEL,
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_PART_CELLS="256",
        SCLAKE_SENSOR_POKE_S="3",
        SCLAKE_EMBED_CATCH_UP_MINUTES="2",
        SCLAKE_STACK_ONLY="s3,mlflow,airflow",
        **{f"SCLAKE_STACK_{name}_PORT": str(free_port()) for name in PORTS},
    )
    for k, v in env.items():  # load_settings below reads the same stack
        if k.startswith("SCLAKE_"):
            os.environ[k] = v
    from pipelines.lake import PATHS, Lake
    from pipelines.models.synthesize import synthesize
    from pipelines.sample import write_sample
    from pipelines.settings import load_settings

    settings = load_settings()
    synthesize(settings, MODEL, tiny=True)
    files = [
        write_sample(work / f"u{i}.h5ad", cells=args.cells, genes=args.genes, seed=100 + i) for i in range(args.uploads)
    ]
    keys = {f"incoming/lab-{i}/u{i}.h5ad": f for i, f in enumerate(files)}
    keys["incoming/lab-0/u0-again.h5ad"] = files[0]  # the same bytes twice in one batch

    t = time.monotonic()
    up = subprocess.run([SCLAKE, "stack", "up"], env=env, capture_output=True, text=True, timeout=900)
    stack_up_s = time.monotonic() - t
    try:
        if up.returncode != 0:
            raise SystemExit(f"sclake stack up failed:\n{up.stderr[-3000:]}")
        lake = Lake(load_settings())  # with the stack's endpoint and credentials (stack.env)
        started = time.monotonic()
        with ThreadPoolExecutor(len(keys)) as pool:
            list(pool.map(lambda kv: lake.put(kv[1], kv[0]), keys.items()))
        finished: dict[str, float] = {}
        datasets: set[str] = set()
        while time.monotonic() - started < args.bound:
            datasets = {raw.split("/")[-1].removesuffix(".h5ad") for raw in lake.ls(PATHS.raw_dir)}
            for d in datasets - set(finished):
                if lake.is_published(PATHS.embeddings(MODEL, d)):
                    finished[d] = round(time.monotonic() - started, 1)
            if len(finished) == args.uploads:
                break
            time.sleep(2)
    finally:
        subprocess.run([SCLAKE, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
    result = {
        "probe": "concurrent uploads on the embedded stack (Airflow standalone, rclone S3, tiny model)",
        "uploads": args.uploads,
        "extra_duplicate_uploads": 1,
        "embedded": len(finished),
        "total": args.uploads,
        "datasets_seen": len(datasets),
        "seconds_to_last": max(finished.values()) if len(finished) == args.uploads else None,
        "seconds_each": sorted(finished.values()),
        "bound_s": args.bound,
        "stack_up_s": round(stack_up_s, 1),
        "cells_per_upload": args.cells,
        "genes": args.genes,
    }
    path = write_result("concurrent_uploads", result)
    print(json.dumps(result))
    print(f"result: {path}")


if __name__ == "__main__":
    main()
