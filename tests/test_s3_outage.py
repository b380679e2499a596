"""The S3 server dies while the ingest DAG converts an upload; Airflow's retry finishes the job.

The lake is on a real ``rclone serve s3`` over a folder of its own, so that the test can kill
it (SIGKILL, as a crashed host would) and read the folder directly while it is down. The
ingest task must fail (the retry is Airflow's: ``dag.test()`` waits out the retry delay),
leave nothing published and the upload where it was; once the server is back the retry
resumes the conversion, and the embeddings equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings
from tests.conftest import free_port, rclone_binary
from tests.test_dags import ROOT, airflow_env, dag_test
from tests.test_ingest_crash import completed_parts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PART_CELLS, PARTS = 64, 40
DAG_RUN = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag({dags!r})
assert not bag.import_errors, bag.import_errors
run = bag.get_dag({dag_id!r}).test()
tis = {{f"{{t.task_id}}[{{t.map_index}}]": [str(t.state), t.try_number] for t in run.get_task_instances()}}
print(json.dumps({{"state": str(run.state), "tis": tis}}))
"""


class Rclone:
    """``rclone serve s3`` over ``root`` on a fixed port, which can be killed and started again."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.port = free_port()
        self.key, self.secret = "sclake" + secrets.token_hex(8), secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", str(self.root), "--addr", f"127.0.0.1:{self.port}"]
                + ["--auth-key", f"{self.key},{self.secret}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def ingest_tries(airflow_db: Path) -> list[tuple[str, int]]:
    """(state, try number) of the ingest task instances, read from Airflow's metadata database."""
    try:
        with sqlite3.connect(f"file:{airflow_db}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT state, try_number FROM task_instance WHERE task_id = 'process_upload.ingest'"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return []
    return [(str(s), int(n)) for s, n in rows]


def embeddings(lake: Lake, model: str, dataset_id: str) -> list:
    """The published Parquet parts of a dataset, read back without their key-value metadata."""
    prefix = PATHS.embeddings(model, dataset_id)
    assert lake.is_published(prefix)
    tables = []
    for rel in lake.ls(prefix, suffix=".parquet"):
        with lake.open(rel, "rb") as f:
            tables.append((rel.split("/")[-1], pq.read_table(f).replace_schema_metadata(None)))
    return tables


def test_s3_outage_fails_the_task_cleanly_and_the_retry_recovers(
    tmp_path: Path, models_dir: Path, tiny_model: str
) -> None:
    from pipelines.sample import write_sample

    root = tmp_path / "s3"
    (root / "lake").mkdir(parents=True)
    server = Rclone(root, tmp_path / "rclone.log")
    server.start()
    try:
        settings = Settings(
            home=tmp_path / "home",
            lake_uri="s3://lake/outage",
            s3_endpoint_url=server.endpoint,
            s3_access_key=server.key,
            s3_secret_key=server.secret,
            models_dir=models_dir,
            pushgateway_url=None,
        )
        lake = Lake(settings)
        # The same objects, read from the server's folder: what is there while the server is down.
        on_disk = Lake(Settings(home=tmp_path / "home", lake_uri=f"file://{root / 'lake' / 'outage'}"))
        upload = write_sample(tmp_path / "upload.h5ad", cells=PART_CELLS * PARTS, genes=1500, seed=31)
        key = "incoming/lab-a/upload.h5ad"
        lake.put(upload, key)
        dataset_id = lake.sha256(key)[:16]
        stage = Path(on_disk.path(PATHS.zarr(dataset_id)))  # on S3 the store is written in place

        env = airflow_env(
            tmp_path,
            settings,
            SCLAKE_SENSOR_TIMEOUT_S="3",
            SCLAKE_SENSOR_POKE_S="1",
            SCLAKE_MODELS=tiny_model,
            SCLAKE_PART_CELLS=str(PART_CELLS),
        )
        airflow = str(Path(sys.executable).with_name("airflow"))
        migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stderr[-2000:]

        log_path = tmp_path / "ingest-dag.log"
        code = textwrap.dedent(DAG_RUN.format(dags=str(ROOT / "dags"), dag_id="sclake_ingest"))
        with log_path.open("wb") as log:
            dag = subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            # Kill the server once the conversion is under way.
            deadline = time.monotonic() + 600
            while completed_parts(stage) < 3:
                assert dag.poll() is None, log_path.read_text()[-5000:]
                assert time.monotonic() < deadline, "the ingest task converted no part in time"
                time.sleep(0.1)
            server.kill()
            kept = completed_parts(stage)
            assert kept < PARTS, "the conversion finished before the server went down"

            # The task fails and waits for its retry; the DAG run goes on.
            airflow_db = tmp_path / "airflow" / "airflow.db"
            while ("up_for_retry", 1) not in ingest_tries(airflow_db):
                assert dag.poll() is None, log_path.read_text()[-5000:]
                assert time.monotonic() < deadline, f"the ingest task did not fail: {ingest_tries(airflow_db)}"
                time.sleep(0.5)
            failed_at = log_path.stat().st_size

            # Nothing half-published, the upload still waiting, nothing quarantined.
            assert not on_disk.is_published(PATHS.zarr(dataset_id))
            assert on_disk.ls(PATHS.zarr_dir) == [PATHS.zarr(dataset_id)]  # unfinished, in place, without its marker
            assert on_disk.read_bytes(key) == upload.read_bytes()
            assert on_disk.ls(PATHS.quarantine_dir, recursive=True) == []
            raw = PATHS.raw(dataset_id)
            assert not on_disk.exists(raw) or on_disk.read_bytes(raw) == upload.read_bytes()
            assert on_disk.ls(PATHS.embeddings_dir, recursive=True) == []

            server.start()  # back before Airflow's retry delay (15 s) runs out
            assert dag.wait(900) == 0, log_path.read_text()[-5000:]
        finally:
            if dag.poll() is None:
                os.killpg(dag.pid, signal.SIGKILL)
                dag.wait()
        text = log_path.read_text()
        result = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith('{"state"')))
        tis = result["tis"]
        assert result["state"] == "success", tis
        # One failed try of ingest, then the retry; validation and publication ran once, after it.
        assert tis["process_upload.ingest[0]"] == ["success", 2], tis
        assert tis["process_upload.validate[0]"] == ["success", 1], tis
        assert tis["process_upload.publish[0]"] == ["success", 1], tis
        failure, retry = text[:failed_at], text[failed_at:]
        # The failed try ends with one error, which names the endpoint that did not answer.
        assert failure.count("Task failed with exception") == 1, failure[-5000:]
        assert f'Could not connect to the endpoint URL: "http://127.0.0.1:{server.port}/' in failure, failure[-5000:]
        resumed = f"resuming {dataset_id}: " in retry and f" of {PARTS} parts were converted before" in retry
        assert resumed, retry[-5000:]  # the retry kept the parts converted before the outage
        assert lake.is_published(PATHS.zarr(dataset_id))
        assert lake.ls(PATHS.incoming, recursive=True) == []
        assert lake.read_bytes(PATHS.raw(dataset_id)) == upload.read_bytes()
        assert lake.ls(PATHS.quarantine_dir, recursive=True) == []

        embed = dag_test("sclake_embed", env)
        assert embed["state"] == "success", embed
        interrupted = embeddings(lake, tiny_model, dataset_id)

        # The same upload run without interruption (`sclake run`) into another lake on the server.
        base = {**env, "SCLAKE_LAKE_URI": "s3://lake/uninterrupted"}
        run = subprocess.run(
            [str(Path(sys.executable).with_name("sclake")), "run", str(upload), "--model", tiny_model],
            env=base,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        baseline_lake = Lake(Settings(**{**settings.model_dump(), "lake_uri": "s3://lake/uninterrupted"}))
        baseline = embeddings(baseline_lake, tiny_model, dataset_id)
        assert [name for name, _ in interrupted] == [name for name, _ in baseline]
        assert len(interrupted) == PARTS
        for (name, got), (_, want) in zip(interrupted, baseline, strict=True):
            assert got.equals(want), f"{name} differs from the uninterrupted run's"
        assert sum(t.num_rows for _, t in interrupted) == PART_CELLS * PARTS
    finally:
        server.kill()
