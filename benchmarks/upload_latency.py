"""Upload → queryable embeddings on the embedded stack: the stack's Dask cluster vs a cluster per task.

For each mode, in a fresh home on free ports: ``sclake stack up`` (the S3 server, MLflow and
Airflow standalone; ``persistent`` adds the stack's Dask scheduler and workers, so that
``stack.env`` holds ``SCLAKE_DASK_ADDRESS``; ``per-task`` leaves them out, so that every task
starts a ``LocalCluster``), wait until the ingest DAG's sensor waits, put one sample
(``--cells`` x ``--genes``) into ``incoming/`` and measure the seconds until its embeddings
with the tiny model are published (queryable), then read when each Airflow task of that
upload started and ended (seconds after the upload: the sensor's pick-up, each step's run
time, the gaps between tasks), and stop the stack. The modes run one after the other in the
same invocation (``--repeat`` alternates them), so their figures compare on the same
machine at the same time of day.

The Dask start a step pays is also measured apart, three times per mode, in fresh processes
with the stack's environment (as every Airflow task is one): getting a client from
:func:`pipelines.dask_cluster.dask_client`, one task on it, and closing it; with
``SCLAKE_DASK_ADDRESS`` a connection, without it a ``LocalCluster`` of its own.

Prints the JSON result (with the load averages before and after each mode) and writes
``benchmarks/results/upload_latency.json``.

Usage::

    .venv/bin/python benchmarks/upload_latency.py [--cells 3000] [--genes 2000] [--modes persistent,per-task]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_result  # noqa: E402

MODEL = "gf-6L-10M-i2048"
SCLAKE = str(Path(sys.executable).with_name("sclake"))
PORTS = (
    "S3",
    "MLFLOW",
    "DASK_SCHEDULER",
    "DASK_DASHBOARD",
    "AIRFLOW",
    "PROMETHEUS",
    "PUSHGATEWAY",
    "NODE_EXPORTER",
    "AIRFLOW_EXPORTER",
)
SERVICES = {"persistent": "s3,mlflow,dask-scheduler,dask-worker,airflow", "per-task": "s3,mlflow,airflow"}
STEP_TASKS = (".ingest", ".validate", ".embed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stack_env(home: Path, models: Path, mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW", "DASK_"))}
    env.update(
        SCLAKE_HOME=str(home),
        SCLAKE_MODELS_DIR=str(models),
        SCLAKE_MODELS=MODEL,
        SCLAKE_STACK_ONLY=SERVICES[mode],
        **{f"SCLAKE_STACK_{name}_PORT": str(free_port()) for name in PORTS},
    )
    return env


def task_timeline(client: Any, upload: datetime) -> list[dict[str, Any]]:
    """Every task instance that ended after the upload: its start and end, in seconds after the upload."""
    rows = []
    for dag_id in ("sclake_ingest", "sclake_embed"):
        for run in client.dag_runs(dag_id, limit=5):
            for ti in client.task_instances(dag_id, run["dag_run_id"]):
                if not ti.get("start_date") or not ti.get("end_date"):
                    continue
                start, end = (datetime.fromisoformat(ti[k]) for k in ("start_date", "end_date"))
                if end > upload:
                    offsets = [round((t - upload).total_seconds(), 1) for t in (start, end)]
                    rows.append({"task": ti["task_id"], "start_s": offsets[0], "end_s": offsets[1]})
    return sorted(rows, key=lambda r: r["start_s"])


def step_seconds(timeline: list[dict[str, Any]]) -> dict[str, float]:
    """Run time of the step tasks (ingest, validate, embed), from the timeline."""
    return {
        r["task"].rsplit(".", 1)[-1]: round(r["end_s"] - r["start_s"], 1)
        for r in timeline
        if r["task"].endswith(STEP_TASKS)
    }


def wait_for_sensor(client: Any, bound: float) -> None:
    """Until the ingest DAG's sensor waits for uploads (the DAGs are parsed and running)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            for run in client.dag_runs("sclake_ingest", limit=3):
                tis = client.task_instances("sclake_ingest", run["dag_run_id"])
                if any(t["task_id"] == "wait_for_uploads" and t["state"] in ("deferred", "running") for t in tis):
                    return
        except Exception:  # noqa: BLE001 - the API answers errors while the DAGs are being parsed
            pass
        time.sleep(2)
    raise SystemExit(f"the ingest DAG's sensor did not start within {bound:.0f}s")


COLD_START = """
import time
t = time.perf_counter()
from pipelines.dask_cluster import dask_client
from pipelines.settings import load_settings
with dask_client(load_settings(cwd_env=False)) as client:
    client.submit(sum, [1, 2], pure=False).result()
print(round(time.perf_counter() - t, 2))
"""


def dask_start_seconds(env: dict[str, str], repeat: int = 3) -> list[float]:
    """Seconds a fresh process (as each Airflow task is) takes to get a Dask client per the stack's
    settings and run one task on it, and to let it go: what a step pays for its cluster."""
    out = []
    for _ in range(repeat):
        r = subprocess.run([sys.executable, "-c", COLD_START], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"the Dask start probe failed:\n{r.stderr[-2000:]}")
        out.append(float(r.stdout.split()[-1]))
    return out


def run_mode(mode: str, work: Path, sample: Path, dataset_id: str, bound: float) -> dict[str, Any]:
    """One mode in a fresh home under ``work``: stack up, one upload until its embeddings, stack down."""
    from pipelines.lake import PATHS, Lake
    from pipelines.orchestration.airflow_api import AirflowClient
    from pipelines.settings import load_settings
    from pipelines.stack.airflow import ADMIN_USER, admin_password

    home = work / mode / "home"
    env = stack_env(home, work.parent / "models", mode)
    out: dict[str, Any] = {"mode": mode, "services": SERVICES[mode], "load_before": load()}
    t = time.monotonic()
    up = subprocess.run([SCLAKE, "stack", "up"], env=env, capture_output=True, text=True, timeout=900)
    out["stack_up_s"] = round(time.monotonic() - t, 1)
    try:
        if up.returncode != 0:
            raise SystemExit(f"sclake stack up failed:\n{up.stderr[-3000:]}")
        settings = load_settings(home=home, cwd_env=False)
        out["dask_address"] = settings.dask_address
        client = AirflowClient(
            f"http://127.0.0.1:{env['SCLAKE_STACK_AIRFLOW_PORT']}", ADMIN_USER, admin_password(settings)
        )
        wait_for_sensor(client, bound)
        lake = Lake(settings)
        uploaded = datetime.now().astimezone()
        started = time.monotonic()
        lake.put(sample, "incoming/sample.h5ad")
        while not lake.is_published(PATHS.embeddings(MODEL, dataset_id)):
            if time.monotonic() - started > bound:
                raise SystemExit(f"{mode}: no embeddings {bound:.0f}s after the upload")
            time.sleep(1)
        out["upload_to_embeddings_s"] = round(time.monotonic() - started, 1)
        out["load_after"] = load()
        time.sleep(5)  # the embed task's end is recorded after its output is published
        out["timeline"] = task_timeline(client, uploaded)
        out["step_task_s"] = step_seconds(out["timeline"])
        out["dask_client_start_s"] = dask_start_seconds(env)
    finally:
        subprocess.run([SCLAKE, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--modes", default="persistent,per-task", help="comma-separated: persistent, per-task")
    parser.add_argument("--repeat", type=int, default=1, help="run the modes this many times, alternating")
    parser.add_argument("--bound", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-upload-latency"))
    args = parser.parse_args()

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "models").mkdir(parents=True)
    from pipelines.models.synthesize import synthesize
    from pipelines.sample import write_sample
    from pipelines.settings import Settings

    synthesize(Settings(home=work / "models", models_dir=work / "models"), MODEL, tiny=True)
    sample = write_sample(work / "sample.h5ad", cells=args.cells, genes=args.genes, seed=3)
    dataset_id = hashlib.sha256(sample.read_bytes()).hexdigest()[:16]
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes = [run_mode(m, work / f"run{i}", sample, dataset_id, args.bound) for i in range(args.repeat) for m in names]
    by_mode: dict[str, list[float]] = {}
    for m in modes:
        by_mode.setdefault(m["mode"], []).append(m["upload_to_embeddings_s"])
    result: dict[str, Any] = {
        "probe": "one upload to published embeddings on the embedded stack (Airflow standalone, rclone S3, tiny model)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cells": args.cells,
        "genes": args.genes,
        "model": f"{MODEL} (tiny, synthetic)",
        "modes": modes,
    }
    result["upload_to_embeddings_s"] = by_mode
    if {"persistent", "per-task"} <= by_mode.keys():
        before, after = min(by_mode["per-task"]), min(by_mode["persistent"])
        result["ratio_best_per_task_to_persistent"] = round(before / after, 2)
    path = write_result("upload_latency", result)
    print(json.dumps(result, indent=2))
    print(f"result: {path}")


if __name__ == "__main__":
    main()
