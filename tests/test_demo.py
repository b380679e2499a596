"""`sclake demo` itself: the embedded stack, a sample upload, both DAGs through Airflow, the query."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path: Path, models_dir: Path, tiny_model: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_MODELS_DIR=str(models_dir),
        SCLAKE_MODELS=tiny_model,
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_SENSOR_POKE_S="5",
        **{
            f"SCLAKE_STACK_{name}_PORT": str(free_port())
            for name in (
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
        },
    )
    sclake = str(Path(sys.executable).with_name("sclake"))
    try:
        r = subprocess.run(
            [sclake, "demo", "--cells", "400", "--genes", "3000", "--timeout", "1500"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
        m = re.search(r"embeddings of dataset ([0-9a-f]{16}) with (\S+): ([\d,]+) rows", r.stdout)
        assert m, r.stdout
        assert m.group(2) == tiny_model and int(m.group(3).replace(",", "")) == 400
        assert "sclake_ingest run" in r.stdout and "sclake_embed run" in r.stdout
        # The first sample became the annotator's reference; the second came out annotated.
        assert "registered dataset " + m.group(1) + " as a reference: annotator 'demo-cell-type'" in r.stdout
        annotated = re.search(r"annotations of dataset ([0-9a-f]{16}) by 'demo-cell-type': ([\d,]+) cells", r.stdout)
        assert annotated and annotated.group(1) != m.group(1) and annotated.group(2) == "200", r.stdout
        assert "Predicted labels of the second sample" in r.stdout and "predicted" in r.stdout
        assert "Airflow" in r.stdout and "MLflow" in r.stdout
        where = r.stdout[r.stdout.index("Where to look:") :]
        assert re.search(r"\n  Dask +http://\S+:\d+/\S*  \(scheduler tcp://\S+:\d+", where), where
        # A second demo with the same sample finds the embeddings and only prints the query.
        again = subprocess.run(
            [sclake, "demo", "--cells", "400", "--genes", "3000"], env=env, capture_output=True, text=True, timeout=900
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "nothing new to do" in again.stdout
    finally:
        subprocess.run([sclake, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
