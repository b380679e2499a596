"""Grafana dashboards: valid JSON on the provisioned datasource, and every panel query run against a
live Prometheus that scraped a real embedded run (sclake run through ingest, validate and embed, a
duplicate and a broken upload, and a real Airflow run with a failing task)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from monitoring_support import (
    DASHBOARDS,
    PROBE_DAG_ID,
    Prometheus,
    binary,
    free_port,
    http_get,
    prometheus,
    pushgateway,
    run_airflow_probe,
    service,
)

from pipelines.settings import Settings
from pipelines.stack.monitoring import render_prometheus_config

DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
PROVISIONING = DASHBOARDS / "provisioning"
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms", "__all"}
# What the test puts for Grafana's own variables; template variables are set to "All".
SUBSTITUTIONS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    for p in dashboard["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def datasource_uid() -> str:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (ds,) = config["datasources"]
    assert ds["type"] == "prometheus"
    return ds["uid"]


def expand(expr: str, variables: dict[str, str]) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, SUBSTITUTIONS.get(name, m.group(0)))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


# ---------------------------------------------------------------------------------------------- static


def test_dashboards_are_valid_and_uids_unique() -> None:
    assert {p.stem for p in DASHBOARD_FILES} == {"sclake-pipeline", "sclake-airflow", "sclake-resources"}
    uids = [load(p)["uid"] for p in DASHBOARD_FILES]
    assert len(set(uids)) == len(uids)
    assert uids == [p.stem for p in DASHBOARD_FILES]  # file name = uid
    for path in DASHBOARD_FILES:
        d = load(path)
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), path.name
        assert all(p["title"] for p in panels(d)), path.name


def test_panels_use_the_provisioned_datasource() -> None:
    uid = datasource_uid()
    for path in DASHBOARD_FILES:
        text = path.read_text()
        assert "__inputs" not in text and "${DS_" not in text, path.name
        d = load(path)
        for p in panels(d):
            assert p["datasource"] == {"type": "prometheus", "uid": uid}, (path.name, p["title"])
            assert p["targets"], (path.name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == uid and t["expr"].strip(), (path.name, p["title"])
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] == uid, (path.name, v["name"])


def test_every_variable_used_is_defined() -> None:
    for path in DASHBOARD_FILES:
        d = load(path)
        defined = {v["name"] for v in d["templating"]["list"]} | GRAFANA_BUILTINS
        for p in panels(d):
            for t in p["targets"]:
                used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
                assert used <= defined, (path.name, p["title"], used - defined)


def test_provisioning() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "sclake.yml").read_text())
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/var/lib/grafana/dashboards"
    assert datasource_uid() == "sclake-prometheus"


# ---------------------------------------------------------------------------------------------- live


@dataclass
class Live:
    prom: Prometheus
    cells: int
    rows: int
    models: list[str]
    quarantine_reason: str


def _sclake(args: list[str], env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("sclake"))
    r = subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, f"sclake {' '.join(args)}:\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: str) -> Iterator[Live]:
    probe = run_airflow_probe(tmp_path_factory.getbasetemp() / "airflow-probe")
    tmp = tmp_path_factory.mktemp("dashboards")
    ports = {k: free_port() for k in ("prometheus", "pushgateway", "airflow_exporter", "node_exporter")}
    settings = Settings(
        home=tmp / "home",
        lake_uri=f"file://{tmp / 'lake'}",
        stack_prometheus_port=ports["prometheus"],
        stack_pushgateway_port=ports["pushgateway"],
        stack_airflow_exporter_port=ports["airflow_exporter"],
        stack_node_exporter_port=ports["node_exporter"],
    )
    # The embedded stack's own configuration, with 1 s intervals for the test.
    config = yaml.safe_load(render_prometheus_config(settings))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    exporter = [sys.executable, "-m", "pipelines.airflow_exporter", "--db", str(probe.db)]
    node_exporter = [binary("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{ports['node_exporter']}"]
    with (
        pushgateway(tmp, port=ports["pushgateway"]) as gateway_url,
        service(
            [*exporter, "--port", str(ports["airflow_exporter"])],
            f"http://127.0.0.1:{ports['airflow_exporter']}/metrics",
            tmp / "airflow-exporter.log",
        ),
        service(node_exporter, f"http://127.0.0.1:{ports['node_exporter']}/metrics", tmp / "node-exporter.log"),
        prometheus(tmp, yaml.safe_dump(config), port=ports["prometheus"]) as prom,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
        env.update(
            SCLAKE_HOME=str(settings.home),
            SCLAKE_LAKE_URI=settings.lake_uri,
            SCLAKE_MODELS_DIR=str(models_dir),
            SCLAKE_MODELS=tiny_model,
            SCLAKE_PUSHGATEWAY_URL=gateway_url,
            SCLAKE_DASK_WORKERS="1",
        )
        cells = 200
        sample = tmp / "sample.h5ad"
        _sclake(["sample", str(sample), "--cells", str(cells)], env, tmp)
        summary = json.loads(_sclake(["run", f"file://{sample}"], env, tmp).stdout)
        # An annotator trained on the sample itself, applied to it (the annotation panels).
        reference = ["--reference", summary["dataset_id"], "--label", "cell_type", "--model", tiny_model]
        _sclake(["annotate", "train", *reference, "--name", "dash", "--drop-rare"], env, tmp)
        _sclake(["annotate", "apply", summary["dataset_id"]], env, tmp)
        _sclake(["run", f"file://{sample}"], env, tmp)  # the same bytes again: a duplicate upload
        broken = tmp / "broken.h5ad"
        broken.write_bytes(b"this is not an HDF5 file\n" * 10)
        failed = _sclake(["run", f"file://{broken}"], env, tmp, check=False)
        assert failed.returncode == 1 and "quarantined" in failed.stderr, failed.stderr[-2000:]
        reason = re.search(r"quarantined \((\w+)\)", failed.stderr).group(1)
        # Prometheus has scraped the pushed totals and the exporter.
        for expr in (
            'sclake_uploads_total{outcome="quarantined"}',
            'sclake_uploads_total{outcome="already"}',
            'sclake_cells_processed_total{step="embed"}',
            "sclake_annotated_cells_total",
            "airflow_task_finished_total",
            "node_memory_MemAvailable_bytes",
        ):
            assert prom.wait_for(expr, timeout=60), f"Prometheus has no {expr}"
        time.sleep(3)  # a few more scrapes, so that rate() has samples to work on
        yield Live(prom, cells, int(summary["rows"]), [tiny_model], reason)


def _run_panel(prom: Prometheus, panel: dict, variables: dict[str, str]) -> list[dict]:
    """Run each target as Grafana would (instant or range query); returns the results."""
    results = []
    for t in panel["targets"]:
        expr = expand(t["expr"], variables)
        if t.get("instant"):
            answer = prom.query(expr)
        else:
            now = time.time()
            q = urllib.parse.urlencode({"query": expr, "start": now - 300, "end": now, "step": "5"})
            answer = json.loads(http_get(f"{prom.url}/api/v1/query_range?{q}"))
        assert answer["status"] == "success", (panel["title"], expr, answer)
        results.extend(answer["data"]["result"])
    return results


def _values(prom: Prometheus, d: dict, title: str) -> dict[tuple, float]:
    (panel,) = [p for p in panels(d) if p["title"] == title]
    (t,) = panel["targets"][:1]
    return prom.vector(expand(t["expr"], _all(d)))


def _all(d: dict) -> dict[str, str]:
    return {v["name"]: v.get("allValue") or ".*" for v in d["templating"]["list"]}


# Panels that are empty in this run, and why.
MAY_BE_EMPTY = {
    "Tries up for retry": "no task was retried",
    "DAG runs running": "never empty, but 0",
    "GPU peak memory, last run": "no CUDA here",
    "Container CPU (cores)": "cAdvisor runs in compose only",
    "Container memory (working set)": "cAdvisor runs in compose only",
}


@pytest.mark.slow
@pytest.mark.integration
def test_every_panel_query_runs_and_returns_data(live: Live) -> None:
    empty = []
    for path in DASHBOARD_FILES:
        d = load(path)
        for panel in panels(d):
            if not _run_panel(live.prom, panel, _all(d)) and panel["title"] not in MAY_BE_EMPTY:
                empty.append(f"{path.stem}: {panel['title']}")
    assert not empty, f"panels without data after the run: {empty}"


@pytest.mark.slow
@pytest.mark.integration
def test_variable_queries_list_values(live: Live) -> None:
    for path in DASHBOARD_FILES:
        for v in load(path)["templating"]["list"]:
            metric, label = re.fullmatch(r"label_values\((\w+), *(\w+)\)", v["query"]["query"]).groups()
            q = urllib.parse.urlencode({"match[]": metric})
            values = json.loads(http_get(f"{live.prom.url}/api/v1/label/{label}/values?{q}"))["data"]
            assert values, (path.name, v["name"])
    steps = json.loads(http_get(f"{live.prom.url}/api/v1/label/step/values"))["data"]
    assert {"ingest", "validate", "embed"} <= set(steps)


@pytest.mark.slow
@pytest.mark.integration
def test_pipeline_panels_show_the_run(live: Live) -> None:
    d, prom = load(DASHBOARDS / "sclake-pipeline.json"), live.prom
    assert live.rows == live.cells
    assert _values(prom, d, "Cells embedded") == {(): live.rows}
    assert _values(prom, d, "Cells ingested") == {(): live.cells}
    assert _values(prom, d, "Cells validated") == {(): live.cells}
    assert _values(prom, d, "Uploads ingested") == {(): 1}
    assert _values(prom, d, "Duplicate uploads") == {(): 1}
    assert _values(prom, d, "Quarantined uploads") == {(): 1}
    assert _values(prom, d, "Quarantines by reason") == {(("reason", live.quarantine_reason),): 1}
    assert _values(prom, d, "Step failures") == {(): 0}
    durations = _values(prom, d, "Stage duration, last run")
    assert {dict(k)["step"] for k in durations} == {"ingest", "validate", "embed", "annotate"}
    assert all(v > 0 for v in durations.values())
    # The annotator labelled every embedded cell once (the duplicate upload was not annotated again).
    assert _values(prom, d, "Cells annotated") == {(): live.rows}
    by_outcome = _values(prom, d, "Cells annotated by annotator")
    assert {dict(k)["annotator"] for k in by_outcome} == {"dash"} and sum(by_outcome.values()) == live.rows
    ((_, unknown_share),) = _values(prom, d, "Share labelled unknown").items()
    unknown = sum(v for k, v in by_outcome.items() if dict(k)["outcome"] == "unknown")
    assert unknown_share == pytest.approx(unknown / live.rows)
    rate = _values(prom, d, "Cells per second, last run")
    (embed_rate,) = [v for k, v in rate.items() if dict(k)["step"] == "embed"]
    assert embed_rate > 0


@pytest.mark.slow
@pytest.mark.integration
def test_airflow_panels_show_the_failed_task(live: Live) -> None:
    d, prom = load(DASHBOARDS / "sclake-airflow.json"), live.prom
    assert _values(prom, d, "Task failures by DAG and task") == {(("dag_id", PROBE_DAG_ID), ("task_id", "explode")): 1}
    assert _values(prom, d, "Task successes by DAG and task") == {
        (("dag_id", PROBE_DAG_ID), ("task_id", "extract")): 1,
        (("dag_id", PROBE_DAG_ID), ("task_id", "grp__double")): 1,
    }
    assert _values(prom, d, "Task failures") == {(): 1}
    assert _values(prom, d, "DAG runs finished") == {(("dag_id", PROBE_DAG_ID), ("state", "failed")): 1}
    (mean,) = _values(prom, d, "DAG-run mean duration").values()
    assert 0 < mean < 600


@pytest.mark.slow
@pytest.mark.integration
def test_resources_panels(live: Live) -> None:
    d, prom = load(DASHBOARDS / "sclake-resources.json"), live.prom
    rss = _values(prom, d, "Step peak RSS, last run")
    assert {dict(k)["step"] for k in rss} == {"ingest", "validate", "embed", "annotate"}
    assert all(v > 50 * 2**20 for v in rss.values())  # a Python process with numpy/zarr loaded
    cpu = _values(prom, d, "CPU seconds per run")
    assert all(v > 0 for v in cpu.values())
    (used,) = [v for k, v in _values(prom, d, "Host memory used").items()]
    assert used > 0
