"""The local compose stack for real: `make compose-up-local`, an upload through it, `make compose-down-local`.

The stack is compose/docker-compose.yml with compose/docker-compose.local.yml (stand-ins built
here for the images that cannot be pulled). The test starts it (building what is missing),
checks that every service is healthy, follows a sample upload through Airflow's Celery
worker and the DockerOperator's step containers to embeddings counted with DuckDB over the
S3 API, finds the Airflow task outcomes and the pipeline's metrics in Prometheus, and checks
that `make compose-down-local VOLUMES=1` leaves no container. Note: the local stack's volumes
(its lake included) are removed at the start and at the end.

Skipped where no Docker engine answers, except in CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from types import ModuleType

import pytest

from tests.docker_support import ROOT, containers, require_docker, run_group

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECT_LABEL = "com.docker.compose.project=sclake"
STEP_LABEL = "io.sclake.step"
LONG_RUNNING = {
    "minio",
    "postgres",
    "redis",
    "docker-socket-proxy",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-exporter",
    "mlflow",
    "dask-scheduler",
    "dask-worker-cpu",
    "prometheus",
    "pushgateway",
    "node-exporter",
}
ONE_SHOT = {"preflight", "minio-init", "airflow-init", "models-init"}
LEFT_OUT = {"grafana", "cadvisor", "statsd-exporter"}
CELLS = 400


def make(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return run_group(["make", *args], timeout=timeout)


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_local_demo", ROOT / "compose" / "local" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inspect(ids: list[str]) -> list[dict]:
    r = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(r.stdout)


def prometheus_query(port: str, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def project_volumes() -> list[str]:
    r = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={PROJECT_LABEL}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return r.stdout.split()


@pytest.fixture(scope="module")
def stack():
    """A local stack started here from nothing; stopped, volumes removed, at the end (also when
    it fails to start). What an earlier stack left (containers, volumes with other secrets)
    is removed first."""
    require_docker()
    if containers(PROJECT_LABEL) or containers(STEP_LABEL) or project_volumes():
        r = make("compose-down-local", "VOLUMES=1", timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    started = time.time()
    r = make("compose-up-local", timeout=3600)
    if r.returncode != 0:
        make("compose-down-local", "VOLUMES=1", timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    assert "every service healthy" in r.stdout, r.stdout[-3000:]
    assert "grafana" in r.stdout and "cadvisor" in r.stdout, "compose-up-local must say what it leaves out"
    demo = load_demo()
    yield {"demo": demo, "env": demo.stack_env(), "started": started, "up_output": r.stdout}
    if containers(PROJECT_LABEL) or containers(STEP_LABEL):
        make("compose-down-local", "VOLUMES=1", timeout=600)


def test_every_service_healthy(stack):
    services = {}
    for c in inspect(containers(PROJECT_LABEL)):
        services[c["Config"]["Labels"]["com.docker.compose.service"]] = c
    assert LONG_RUNNING | ONE_SHOT <= set(services), f"not started: {sorted(LONG_RUNNING | ONE_SHOT - set(services))}"
    assert not LEFT_OUT & set(services)
    for name in LONG_RUNNING:
        state = services[name]["State"]
        assert state["Status"] == "running", (name, state)
        assert state.get("Health", {}).get("Status") == "healthy", (name, state.get("Health"))
    for name in ONE_SHOT:
        state = services[name]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), (name, state)
    # The stand-ins run the images built here, never a registry's.
    for name in ("minio", "postgres", "redis", "docker-socket-proxy", "prometheus", "pushgateway", "node-exporter"):
        assert services[name]["Config"]["Image"].startswith("sclake-local-"), name


@pytest.fixture(scope="module")
def upload(stack):
    """A sample upload followed to embeddings: the demo's result, and the step containers started
    meanwhile. They are watched live: dockerd keeps only its latest events, and the stack's
    health checks soon push older ones out on a busy machine."""
    watch = subprocess.Popen(
        ["docker", "events", "--filter", "type=container", "--filter", "event=start",
         "--filter", f"label={STEP_LABEL}", "--format", '{{index .Actor.Attributes "' + STEP_LABEL + '"}}'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        out = stack["demo"].run(cells=CELLS, genes=4000, seed=7, timeout=900, echo=print)
        time.sleep(2)  # the last events reach the watcher
    finally:
        watch.terminate()
        started, _ = watch.communicate(timeout=30)
    return {**out, "step_containers": started.split()}


def test_upload_flows_to_parquet_through_celery_and_step_containers(stack, upload):
    assert upload["rows"] == CELLS
    assert set(upload["runs"]) == {"sclake_ingest", "sclake_embed"}, "the upload must be new to the lake"

    # Every task ran on the Celery worker container, the steps as DockerOperator containers.
    client = stack["demo"].airflow_client(stack["env"])
    (worker,) = inspect(_service_ids("airflow-worker"))
    hostname = worker["Config"]["Hostname"]
    operators = set()
    for dag_id, run_id in upload["runs"].items():
        for ti in client.task_instances(dag_id, run_id):
            if ti["state"] != "success" or ti.get("operator") in ("EmptyOperator", None):
                continue
            assert ti["hostname"] in (hostname, worker["Id"][:12]), (dag_id, ti["task_id"], ti["hostname"])
            operators.add(ti["operator"])
    assert any("DockerOperator" in op for op in operators), operators

    steps = set(upload["step_containers"])  # the `sclake step` names: ingest_upload, validate_upload, embed
    assert "embed" in steps and any(step.startswith("ingest") for step in steps), steps


def _service_ids(service: str) -> list[str]:
    return containers(f"com.docker.compose.service={service}", all_states=False)


def test_prometheus_has_airflow_outcomes_and_pipeline_metrics(stack, upload):
    port = stack["env"].get("PROMETHEUS_PORT") or "9090"
    queries = {
        "airflow-exporter up": 'up{job="airflow-exporter"} == 1',
        "ingest task successes": 'sum(airflow_task_finished_total{dag_id="sclake_ingest",state="success"}) > 0',
        "embed task successes": 'sum(airflow_task_finished_total{dag_id="sclake_embed",state="success"}) > 0',
        "DAG-run durations": 'sum(airflow_dagrun_duration_seconds_count{dag_id="sclake_embed",state="success"}) > 0',
        "cells embedded": f'sum(sclake_cells_processed_total{{step="embed"}}) >= {CELLS}',
        "embed step duration": 'sclake_step_duration_seconds{step="embed"}',
        "node-exporter": 'node_memory_MemTotal_bytes{job="node-exporter"}',
    }
    deadline = time.monotonic() + 120  # a few scrape intervals (15 s)
    missing = dict(queries)
    while missing and time.monotonic() < deadline:
        missing = {name: expr for name, expr in missing.items() if not prometheus_query(port, expr)}
        if missing:
            time.sleep(5)
    assert not missing, f"Prometheus has no data for: {missing}"


# Dashboard panels that stay empty on this stack after one successful upload, and why
# (tests/test_dashboards.py feeds refusals, duplicates and failures to every panel on the
# embedded stack; here the queries must run on the compose stack's Prometheus).
PANELS_MAY_BE_EMPTY = {
    "Tries up for retry": "no task was retried",
    "Task failures": "no task failed",
    "Task failures by DAG and task": "no task failed",
    "Duplicate uploads": "no upload was seen twice",
    "Quarantined uploads": "no upload was refused",
    "Quarantines by reason": "no upload was refused",
    "Cells annotated": "no annotator is registered in the compose demo",
    "Share labelled unknown": "no annotator is registered in the compose demo",
    "Cells annotated by annotator": "no annotator is registered in the compose demo",
    "GPU peak memory, last run": "no CUDA here",
    "Container CPU (cores)": "no cAdvisor in the local stack",
    "Container memory (working set)": "no cAdvisor in the local stack",
}


def test_dashboard_queries_run_on_this_prometheus(stack, upload):
    """Grafana is left out: every panel query of dashboards/ runs on the stand-in Prometheus instead."""
    from tests.test_dashboards import DASHBOARD_FILES, expand, load, panels

    port = stack["env"].get("PROMETHEUS_PORT") or "9090"
    empty, failed = [], []
    deadline = time.monotonic() + 90  # a few scrape intervals after the upload
    while True:
        empty, failed = [], []
        for path in DASHBOARD_FILES:
            d = load(path)
            variables = {v["name"]: v.get("allValue") or ".*" for v in d["templating"]["list"]}
            for panel in panels(d):
                results = []
                for target in panel["targets"]:
                    expr = expand(target["expr"], variables)
                    now = time.time()
                    q = {"query": expr} if target.get("instant") else {"query": expr, "start": now - 600, "end": now}
                    kind = "query" if target.get("instant") else "query_range"
                    url = f"http://127.0.0.1:{port}/api/v1/{kind}?" + urllib.parse.urlencode({**q, "step": "15"})
                    try:
                        with urllib.request.urlopen(url, timeout=10) as r:
                            results.extend(json.load(r)["data"]["result"])
                    except urllib.error.HTTPError as e:
                        failed.append(f"{path.stem}: {panel['title']}: {expr}: {e.read()[:200]!r}")
                if not results and panel["title"] not in PANELS_MAY_BE_EMPTY:
                    empty.append(f"{path.stem}: {panel['title']}")
        if failed or not empty or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert not failed, f"queries Prometheus refused: {failed}"
    assert not empty, f"panels without data after the upload: {empty}"


def test_down_leaves_no_container(stack):
    r = make("compose-down-local", "VOLUMES=1", timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert containers(PROJECT_LABEL) == []
    assert containers(STEP_LABEL) == []
    r = subprocess.run(["docker", "network", "ls", "-q", "--filter", "name=^sclake$"], capture_output=True, text=True)
    assert r.stdout.strip() == ""
    r = subprocess.run(["docker", "volume", "ls", "-q", "--filter", "name=sclake"], capture_output=True, text=True)
    assert r.stdout.split() == []


def test_local_override_keeps_names_ports_and_health_checks():
    """Without an engine: every production service keeps its ports and a health check in the override."""
    import yaml

    root = ROOT
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed")
    files = ["-f", str(root / "compose/docker-compose.yml")]
    base = subprocess.run(
        [str(exe), "--env-file", str(root / ".env.example"), *files, "config"], capture_output=True, text=True
    )
    local = subprocess.run(
        [
            str(exe),
            "--env-file",
            str(root / ".env.example"),
            *files,
            "-f",
            str(root / "compose/docker-compose.local.yml"),
            "config",
        ],
        capture_output=True,
        text=True,
    )
    assert base.returncode == 0 and local.returncode == 0, base.stderr + local.stderr
    prod, over = yaml.safe_load(base.stdout)["services"], yaml.safe_load(local.stdout)["services"]
    for name, svc in prod.items():
        assert name in over
        assert over[name].get("ports") == svc.get("ports"), name
        assert bool(over[name].get("healthcheck")) == bool(svc.get("healthcheck")), name
        assert set(over[name].get("networks") or ()) == set(svc.get("networks") or ()), name
        if name not in LEFT_OUT and not str(svc.get("image", "")).startswith("sclake-"):
            assert over[name]["image"].startswith("sclake-local-"), f"{name} still needs a registry: {svc['image']}"
    for name in LEFT_OUT:
        assert over[name].get("profiles") == ["upstream"], name
