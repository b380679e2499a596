"""``sclake demo``: the main job on the embedded stack, end to end through Airflow.

1. ``sclake stack up`` (S3 server, MLflow, Airflow, Prometheus/Pushgateway when installed);
2. model files for the configured model (synthetic, ``--tiny`` by default: no weights can be
   downloaded here) unless real or synthetic files are already in the cache;
3. a sample ``.h5ad`` uploaded to ``incoming/demo/``;
4. waits, through Airflow's REST API, for the ingestion DAG run that processes it and the
   embedding DAG run its asset event schedules;
5. prints a DuckDB query over the embeddings and where to look.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger
from pipelines.settings import Settings, load_settings

log = get_logger(__name__)


@dataclass
class DemoOptions:
    cells: int = 2000
    genes: int = 8000
    seed: int = 0
    tiny: bool = True
    timeout: float = 900.0


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def _ensure_model(settings: Settings, model: str, tiny: bool) -> str:
    from pipelines.models.loader import model_status
    from pipelines.models.synthesize import synthesize

    status = model_status(settings, model)
    if status.present:
        return f"{model}: files present ({'synthetic' if status.synthetic else 'real'} weights)"
    synthesize(settings, model, tiny=tiny)
    return f"{model}: synthesized {'tiny ' if tiny else ''}model files (random weights)"


def run_demo(opts: DemoOptions, echo=print) -> dict[str, Any]:
    from pipelines.orchestration.airflow_api import AirflowClient
    from pipelines.query import connect
    from pipelines.sample import write_sample
    from pipelines.stack import services
    from pipelines.stack.airflow import ADMIN_USER, admin_password

    started = time.monotonic()
    echo("1/5 starting the embedded stack (first start takes a few minutes)…")
    rows = services.up(load_settings())
    for r in rows:
        echo(f"    {r.name:<16} {r.state:<14} {r.url}")
    settings = load_settings()  # now with the stack's endpoints and credentials
    model = settings.model_list[0]

    echo("2/5 " + _ensure_model(settings, model, opts.tiny))

    sample = settings.home / "demo" / f"sample-{opts.cells}x{opts.genes}-seed{opts.seed}.h5ad"
    if not sample.exists():
        sample.parent.mkdir(parents=True, exist_ok=True)
        write_sample(sample, cells=opts.cells, genes=opts.genes, seed=opts.seed)
    dataset_id = _sha16(sample)
    lake = Lake(settings)
    key = f"{PATHS.incoming}/demo/{sample.name}"
    client = AirflowClient(
        f"http://{settings.stack_host}:{settings.stack_airflow_port}", ADMIN_USER, admin_password(settings) or ""
    )
    already = lake.is_published(PATHS.embeddings(model, dataset_id))
    if already:
        echo(f"3/5 {sample.name} (dataset {dataset_id}) was embedded by an earlier demo: nothing new to do")
    else:
        upload_time = time.time()
        lake.put(sample, key)
        echo(f"3/5 uploaded {sample.name} ({opts.cells:,} cells) to {lake.url(key)}; dataset id {dataset_id}")
        echo("4/5 waiting for the sensor-driven DAGs (sclake_ingest → sclake_embed)…")
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(upload_time - 5))

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

        waiting = time.monotonic()  # the timeout covers the DAGs, not the stack's first start
        run = client.wait_for_run("sclake_ingest", ours_ingest, timeout=opts.timeout)
        echo(f"    sclake_ingest run {run['dag_run_id']}: {run['state']}")
        remaining = opts.timeout - (time.monotonic() - waiting)
        run = client.wait_for_run("sclake_embed", ours_embed, timeout=remaining)
        echo(f"    sclake_embed run {run['dag_run_id']}: {run['state']}")

    sql = (
        "SELECT model, dataset_id, count(*) AS cells, len(any_value(embedding)) AS width "
        "FROM embeddings GROUP BY ALL ORDER BY ALL"
    )
    con = connect(settings)
    table = con.sql(sql)
    n_rows = con.sql(
        f"SELECT count(*) FROM embeddings WHERE dataset_id = '{dataset_id}' AND model = '{model}'"
    ).fetchone()[0]
    if n_rows == 0:
        from pipelines.errors import SclakeError

        raise SclakeError(f"the DAGs finished but no embeddings of dataset {dataset_id} with {model} are in the lake")
    echo(f"5/5 embeddings of dataset {dataset_id} with {model}: {n_rows:,} rows\n")
    echo(f'$ sclake query "{sql}"')
    echo(str(table))
    by_type = con.sql(
        f"SELECT cell_type, count(*) AS cells FROM embeddings WHERE dataset_id = '{dataset_id}' "
        "GROUP BY ALL ORDER BY cells DESC LIMIT 5"
    )
    echo(str(by_type))
    echo("Where to look:")
    echo(
        f"  Airflow     http://{settings.stack_host}:{settings.stack_airflow_port}  "
        f"(user {ADMIN_USER}, password {admin_password(settings)})"
    )
    echo(f"  MLflow      {settings.mlflow_tracking_uri}")
    for r in rows:
        if r.name in ("prometheus", "pushgateway") and r.state == "running":
            echo(f"  {r.name:<11} {r.url}")
    from pipelines.stack.monitoring import metrics_off_note

    off = metrics_off_note()
    if off:
        echo(f"  {off}")
    echo(f"  Lake        {settings.lake_uri} at {settings.s3_endpoint_url} (keys in {settings.home / 'stack.env'})")
    echo(f"  Lineage     sclake lineage {dataset_id}")
    echo(f"Done in {time.monotonic() - started:.0f}s. Stop the services with `sclake stack down`.")
    return {"dataset_id": dataset_id, "model": model, "rows": n_rows, "seconds": time.monotonic() - started}
