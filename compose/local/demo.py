"""``make compose-demo``: ``sclake demo`` against the compose stack instead of the embedded one.

1. a sample ``.h5ad`` (``sclake sample``), kept in ``build/compose-local/demo/``;
2. uploaded through the S3 API (the ``minio`` service's published port) to ``incoming/``;
3. waits, through Airflow's REST API, for the ``sclake_ingest`` run whose sensor picked the
   upload up and the ``sclake_embed`` run its asset event scheduled (their steps run in
   DockerOperator containers started by the Celery worker);
4. counts the dataset's embeddings with DuckDB over the S3 API and prints ``N rows``.

Credentials and ports come from ``compose/.env``. Run from the repository root with the
project's environment: ``.venv/bin/python compose/local/demo.py [--cells N] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.envgen import parse_env  # noqa: E402
from pipelines.errors import SclakeError  # noqa: E402

ENV_FILE = ROOT / "compose" / ".env"
WORK = ROOT / "build" / "compose-local"


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def stack_env(path: Path = ENV_FILE) -> dict[str, str]:
    """The variables of ``compose/.env``; raises when the file is missing (the stack was never started)."""
    if not path.is_file():
        raise SclakeError(f"{path} not found: start the stack first with `make compose-up-local`")
    return parse_env(path.read_text())


def host_settings(env: dict[str, str]):
    """Settings of a client on this host: the stack's published ports, the lake user's keys."""
    from pipelines.settings import load_settings

    bind = env.get("SCLAKE_BIND_ADDRESS") or "127.0.0.1"
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    return load_settings(
        home=WORK / "demo-home",
        lake_uri=env.get("SCLAKE_LAKE_URI") or "s3://lake",
        s3_endpoint_url=f"http://{host}:{env.get('MINIO_API_PORT') or 9000}",
        s3_access_key=env.get("SCLAKE_S3_ACCESS_KEY") or "sclake",
        s3_secret_key=env["SCLAKE_S3_SECRET_KEY"],
        mlflow_tracking_uri=f"http://{host}:{env.get('MLFLOW_PORT') or 5000}",
        pushgateway_url=None,
        dask_address=None,
        models=env.get("SCLAKE_MODELS") or "gf-6L-10M-i2048",
    )


def airflow_client(env: dict[str, str]):
    from pipelines.orchestration.airflow_api import AirflowClient

    bind = env.get("SCLAKE_BIND_ADDRESS") or "127.0.0.1"
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    return AirflowClient(
        f"http://{host}:{env.get('AIRFLOW_PORT') or 8080}",
        env.get("AIRFLOW_ADMIN_USER") or "admin",
        env["AIRFLOW_ADMIN_PASSWORD"],
    )


def count_rows(settings, dataset_id: str, model: str) -> int:
    """Rows of the dataset's embeddings, counted by DuckDB through the S3 API."""
    from pipelines.query import connect

    con = connect(settings)
    sql = f"SELECT count(*) FROM embeddings WHERE dataset_id = '{dataset_id}' AND model = '{model}'"
    return int(con.sql(sql).fetchone()[0])


def run(cells: int = 2000, genes: int = 8000, seed: int = 0, timeout: float = 900.0, echo=print) -> dict[str, Any]:
    """Upload a sample and follow it to embeddings; returns dataset_id, model, rows, runs and seconds.

    Raises
    ------
    SclakeError
        The stack is not running, a DAG run failed (with the failing task's log) or timed out,
        or the runs succeeded and no embeddings of the dataset are in the lake.
    """
    from pipelines.lake import PATHS, Lake
    from pipelines.sample import write_sample

    env = stack_env()
    settings = host_settings(env)
    model = settings.model_list[0]
    client = airflow_client(env)

    sample = WORK / "demo" / f"sample-{cells}x{genes}-seed{seed}.h5ad"
    if not sample.exists():
        sample.parent.mkdir(parents=True, exist_ok=True)
        write_sample(sample, cells=cells, genes=genes, seed=seed)
    dataset_id = _sha16(sample)
    lake = Lake(settings)
    key = f"{PATHS.incoming}/demo/{sample.name}"
    out: dict[str, Any] = {"dataset_id": dataset_id, "model": model, "runs": {}}

    if lake.is_published(PATHS.embeddings(model, dataset_id)):
        echo(f"1/3 {sample.name} (dataset {dataset_id}) was embedded by an earlier run: nothing new to do")
        out["seconds"] = 0.0
    else:
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))
        started = time.monotonic()
        lake.put(sample, key)
        echo(f"1/3 uploaded {sample.name} ({cells:,} cells) to {lake.url(key)}; dataset id {dataset_id}")
        echo("2/3 waiting for the sensor-driven DAG runs (sclake_ingest, then sclake_embed)…")

        def ours_ingest(run: dict[str, Any], tis: list[dict[str, Any]]) -> bool:
            # The run whose sensor returned our key (the continuous DAG's waiting run picks it up).
            if (run.get("end_date") or "9") < since or not any(t["task_id"] == "wait_for_uploads" for t in tis):
                return False
            return key in str(client.xcom("sclake_ingest", run["dag_run_id"], "wait_for_uploads") or "")

        pending_task = f"embed_{re.sub(r'[^A-Za-z0-9_]', '_', model)}.pending"

        def ours_embed(run: dict[str, Any], tis: list[dict[str, Any]]) -> bool:
            if (run.get("start_date") or "") < since or not any(t["task_id"] == pending_task for t in tis):
                return False
            return dataset_id in str(client.xcom("sclake_embed", run["dag_run_id"], pending_task) or "")

        for dag_id, accept in (("sclake_ingest", ours_ingest), ("sclake_embed", ours_embed)):
            remaining = timeout - (time.monotonic() - started)
            run_ = client.wait_for_run(dag_id, accept, timeout=max(remaining, 1.0))
            out["runs"][dag_id] = run_["dag_run_id"]
            echo(f"    {dag_id} run {run_['dag_run_id']}: {run_['state']} ({time.monotonic() - started:.0f}s)")
        out["seconds"] = time.monotonic() - started

    rows = count_rows(settings, dataset_id, model)
    if rows == 0:
        raise SclakeError(f"the DAG runs succeeded but the lake holds no embeddings of {dataset_id} with {model}")
    out["rows"] = rows
    echo(f"3/3 embeddings of dataset {dataset_id} with {model} (DuckDB over {settings.s3_endpoint_url}):")
    echo(f"{rows} rows")
    if out["seconds"]:
        echo(f"upload -> Parquet: {out['seconds']:.0f}s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose/local/demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000, help="cells of the sample (default 2000)")
    parser.add_argument("--genes", type=int, default=8000, help="genes of the sample (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for both DAG runs")
    args = parser.parse_args(argv)
    try:
        run(args.cells, args.genes, args.seed, args.timeout)
    except SclakeError as e:
        print(f"compose-demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
