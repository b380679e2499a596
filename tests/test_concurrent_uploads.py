"""Many uploads at once on the embedded stack: every distinct dataset ends with embeddings,
without waiting for a later upload, and the same bytes uploaded twice are announced once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.lake import PATHS, Lake
from pipelines.settings import load_settings
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UPLOADS = 5
BOUND_S = 900  # from the uploads to the last embeddings, on a 2-core machine with the tiny model


def test_concurrent_uploads_are_all_embedded(tmp_path: Path, models_dir: Path, tiny_model: str, monkeypatch) -> None:
    from pipelines.orchestration.airflow_api import AirflowClient
    from pipelines.sample import write_sample
    from pipelines.stack.airflow import ADMIN_USER, admin_password

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_MODELS_DIR=str(models_dir),
        SCLAKE_MODELS=tiny_model,
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_PART_CELLS="256",
        SCLAKE_SENSOR_POKE_S="3",
        SCLAKE_EMBED_CATCH_UP_MINUTES="2",
        SCLAKE_STACK_ONLY="s3,mlflow,airflow",
        **{
            f"SCLAKE_STACK_{name}_PORT": str(free_port())
            for name in ("S3", "MLFLOW", "AIRFLOW", "PROMETHEUS", "PUSHGATEWAY", "NODE_EXPORTER", "AIRFLOW_EXPORTER")
        },
    )
    sclake = str(Path(sys.executable).with_name("sclake"))
    for k, v in env.items():
        if k.startswith("SCLAKE_"):
            monkeypatch.setenv(k, v)
    try:
        up = subprocess.run([sclake, "stack", "up"], env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stderr[-3000:]
        settings = load_settings()
        lake = Lake(settings)
        files = [write_sample(tmp_path / f"u{i}.h5ad", cells=150, genes=1500, seed=100 + i) for i in range(UPLOADS)]
        keys = {f"incoming/lab-{i}/u{i}.h5ad": f for i, f in enumerate(files)}
        keys["incoming/lab-0/u0-again.h5ad"] = files[0]  # the same bytes twice in one batch

        started = time.monotonic()
        with ThreadPoolExecutor(len(keys)) as pool:
            list(pool.map(lambda kv: lake.put(kv[1], kv[0]), keys.items()))

        wanted = {raw.split("/")[-1].removesuffix(".h5ad") for raw in lake.ls("raw")}
        while time.monotonic() - started < BOUND_S:
            wanted = {raw.split("/")[-1].removesuffix(".h5ad") for raw in lake.ls("raw")}
            done = {d for d in wanted if lake.is_published(PATHS.embeddings(tiny_model, d))}
            if len(wanted) == UPLOADS and done == wanted:
                break
            time.sleep(5)
        took = time.monotonic() - started
        done = {d for d in wanted if lake.is_published(PATHS.embeddings(tiny_model, d))}
        assert len(wanted) == UPLOADS and done == wanted, f"{len(done)}/{UPLOADS} embedded after {took:.0f}s"
        print(f"{UPLOADS}/{UPLOADS} concurrent uploads embedded; the last {took:.0f}s after the uploads")

        # The twin upload: one validation, one asset event (its publish task skipped, not failed).
        client = AirflowClient(
            f"http://127.0.0.1:{env['SCLAKE_STACK_AIRFLOW_PORT']}", ADMIN_USER, admin_password(settings) or ""
        )
        publish: dict[str, str] = {}
        for run in client.dag_runs("sclake_ingest"):
            for ti in client.task_instances("sclake_ingest", run["dag_run_id"]):
                if ti["task_id"] == "process_upload.publish" and ti["map_index"] >= 0:
                    publish[ti.get("rendered_map_index") or str(ti["map_index"])] = ti["state"]
                if ti["task_id"] == "process_upload.ingest" and ti["state"] == "success":
                    # Read through the API server from the log file (no worker log server runs).
                    log = client.task_log("sclake_ingest", run["dag_run_id"], ti)
                    assert "ingest" in log, log
        twins = sorted(publish[k] for k in ("incoming/lab-0/u0.h5ad", "incoming/lab-0/u0-again.h5ad"))
        assert twins == ["skipped", "success"], publish
        others = [v for k, v in publish.items() if not k.startswith("incoming/lab-0/")]
        assert others == ["success"] * (UPLOADS - 1), publish
    finally:
        subprocess.run([sclake, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
