"""``sclake demo``: the main job on the embedded stack, end to end through Airflow.

1. ``sclake stack up`` (S3 server, MLflow, Airflow, Prometheus/Pushgateway when installed);
2. model files for the configured model (synthetic, ``--tiny`` by default: no weights can be
   downloaded here) unless real or synthetic files are already in the cache;
3. a sample ``.h5ad`` uploaded to ``incoming/demo/``; waits, through Airflow's REST API, for
   the ingestion DAG run that processes it and the embedding DAG run its asset event schedules;
4. registers that sample as a labelled reference: the annotator ``demo-cell-type`` (MLflow
   registry, alias ``champion``) trained on its ``cell_type``;
5. uploads a second sample (new cells from the same tissue) and waits again: the embedding
   DAG annotates it;
6. prints DuckDB queries over the embeddings and the predicted labels, and where to look.
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


ANNOTATOR = "demo-cell-type"


class _Uploader:
    """Uploads a sample to ``incoming/demo/`` and waits for the DAG runs that ingest and embed it."""

    def __init__(self, settings: Settings, model: str, timeout: float, echo) -> None:
        from pipelines.orchestration.airflow_api import AirflowClient
        from pipelines.stack.airflow import ADMIN_USER, admin_password

        self.settings, self.model, self.echo = settings, model, echo
        self.lake = Lake(settings)
        self.client = AirflowClient(
            f"http://{settings.stack_host}:{settings.stack_airflow_port}", ADMIN_USER, admin_password(settings) or ""
        )
        self.deadline = time.monotonic() + timeout  # the timeout covers the DAGs, not the stack's first start

    def sample(self, cells: int, genes: int, seed: int, batch: int = 0) -> Path:
        from pipelines.sample import write_sample

        name = f"sample-{cells}x{genes}-seed{seed}" + (f"-batch{batch}" if batch else "")
        path = self.settings.home / "demo" / f"{name}.h5ad"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_sample(path, cells=cells, genes=genes, seed=seed, batch=batch)
        return path

    def upload(self, step: str, sample: Path, cells: int) -> str:
        """Upload ``sample`` (unless an earlier demo embedded it) and wait for both DAGs; returns its dataset id."""
        dataset_id, model = _sha16(sample), self.model
        if self.lake.is_published(PATHS.embeddings(model, dataset_id)):
            self.echo(f"{step} {sample.name} (dataset {dataset_id}) was embedded by an earlier demo: nothing new to do")
            return dataset_id
        key = f"{PATHS.incoming}/demo/{sample.name}"
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))
        self.lake.put(sample, key)
        self.echo(f"{step} uploaded {sample.name} ({cells:,} cells) to {self.lake.url(key)}; dataset id {dataset_id}")
        self.echo("    waiting for the sensor-driven DAGs (sclake_ingest → sclake_embed)…")
        client = self.client

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

        for dag_id, ours in (("sclake_ingest", ours_ingest), ("sclake_embed", ours_embed)):
            run = client.wait_for_run(dag_id, ours, timeout=max(1.0, self.deadline - time.monotonic()))
            self.echo(f"    {dag_id} run {run['dag_run_id']}: {run['state']}")
        return dataset_id


def _register_reference(settings: Settings, model: str, dataset_id: str, echo) -> None:
    """The first sample as the labelled reference of the annotator ``demo-cell-type`` (once)."""
    from pipelines.annotate import TrainOptions, champions, train_annotator

    found = [a for a in champions(settings, model) if a.name == ANNOTATOR and a.reference == dataset_id]
    if found:
        echo(f"4/6 annotator {ANNOTATOR!r} ({found[0].describe()}) was registered by an earlier demo")
        return
    opts = TrainOptions(dataset_id, "cell_type", model, name=ANNOTATOR, drop_rare=True)
    s = train_annotator(settings, opts)
    echo(
        f"4/6 registered dataset {dataset_id} as a reference: annotator {ANNOTATOR!r} ({s['registered_model']} "
        f"v{s['version']}, alias {s['alias']!r}), held-out accuracy {s['accuracy']:.2f}, macro-F1 "
        f"{s['macro_f1']:.2f} (chance {s['chance']:.2f})"
    )


def run_demo(opts: DemoOptions, echo=print) -> dict[str, Any]:
    from pipelines.annotate import annotate_dataset
    from pipelines.query import connect
    from pipelines.stack import services

    started = time.monotonic()
    echo("1/6 starting the embedded stack (first start takes a few minutes)…")
    rows = services.up(load_settings())
    for r in rows:
        echo(f"    {r.name:<16} {r.state:<14} {r.url}")
    settings = load_settings()  # now with the stack's endpoints and credentials
    model = settings.model_list[0]

    echo("2/6 " + _ensure_model(settings, model, opts.tiny))
    up = _Uploader(settings, model, opts.timeout, echo)
    dataset_id = up.upload("3/6", up.sample(opts.cells, opts.genes, opts.seed), opts.cells)
    _register_reference(settings, model, dataset_id, echo)
    query_cells = max(opts.cells // 2, 1)
    second = up.sample(query_cells, opts.genes, opts.seed, batch=1)
    query_id = up.upload("5/6", second, query_cells)
    # Embedded by an earlier demo before the annotator existed: annotate it now (on request).
    annotate_dataset(settings, query_id, model, annotators=[ANNOTATOR])

    con = connect(settings)
    sql = (
        "SELECT model, dataset_id, count(*) AS cells, len(any_value(embedding)) AS width "
        "FROM embeddings GROUP BY ALL ORDER BY ALL"
    )
    n_rows = con.execute(
        "SELECT count(*) FROM embeddings WHERE dataset_id = ? AND model = ?", [dataset_id, model]
    ).fetchone()[0]
    labels = con.execute(
        "SELECT count(*), count(*) FILTER (label <> 'unknown') FROM annotations WHERE dataset_id = ? AND model = ?",
        [query_id, model],
    ).fetchone()
    if n_rows == 0 or labels[0] == 0:
        from pipelines.errors import SclakeError

        what = "embeddings" if n_rows == 0 else "annotations"
        raise SclakeError(f"the DAGs finished but the lake holds no {what} of the demo's datasets with {model}")
    echo(
        f"6/6 embeddings of dataset {dataset_id} with {model}: {n_rows:,} rows\n"
        f"    annotations of dataset {query_id} by {ANNOTATOR!r}: {labels[0]:,} cells, {labels[1]:,} labelled "
        "(the others below the annotator's threshold: unknown)\n"
    )
    echo(f'$ sclake query "{sql}"')
    echo(str(con.sql(sql)))
    labelled = (
        "SELECT c.cell_type AS given, a.label AS predicted, count(*) AS cells, round(avg(a.probability), 2) AS p "
        f"FROM annotations a JOIN cells c USING (dataset_id, cell_id) WHERE a.dataset_id = '{query_id}' "
        "GROUP BY ALL ORDER BY cells DESC LIMIT 12"
    )
    echo(f'Predicted labels of the second sample (its given cell_type beside them):\n$ sclake query "{labelled}"')
    echo(str(con.sql(labelled)))
    agree = con.execute(
        "SELECT avg((a.best_label = c.cell_type)::INT) FROM annotations a JOIN cells c USING (dataset_id, cell_id) "
        "WHERE a.dataset_id = ?",
        [query_id],
    ).fetchone()[0]
    echo(f"    the best label equals the given one for {100 * float(agree or 0):.0f}% of its cells")
    _where_to_look(settings, rows, query_id, echo)
    echo(f"Done in {time.monotonic() - started:.0f}s. Stop the services with `sclake stack down`.")
    return {
        "dataset_id": dataset_id,
        "model": model,
        "rows": n_rows,
        "annotated_dataset_id": query_id,
        "annotated": labels[0],
        "labelled": labels[1],
        "seconds": time.monotonic() - started,
    }


def _where_to_look(settings: Settings, rows: list[Any], dataset_id: str, echo) -> None:
    from pipelines.stack.airflow import ADMIN_USER, admin_password
    from pipelines.stack.monitoring import metrics_off_note

    echo("Where to look:")
    echo(
        f"  Airflow     http://{settings.stack_host}:{settings.stack_airflow_port}  "
        f"(user {ADMIN_USER}, password {admin_password(settings)})"
    )
    echo(f"  MLflow      {settings.mlflow_tracking_uri}  (annotators: Models, sclake-annotator-{ANNOTATOR})")
    for r in rows:
        if r.name == "dask-scheduler" and r.state == "running":
            echo(f"  Dask        {r.url}  (scheduler {settings.dask_address}: every step's tasks run there)")
    for r in rows:
        if r.name in ("prometheus", "pushgateway") and r.state == "running":
            echo(f"  {r.name:<11} {r.url}")
    off = metrics_off_note()
    if off:
        echo(f"  {off}")
    echo(f"  Lake        {settings.lake_uri} at {settings.s3_endpoint_url} (keys in {settings.home / 'stack.env'})")
    echo(f"  Lineage     sclake lineage {dataset_id}")
