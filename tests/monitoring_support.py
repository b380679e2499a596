"""Helpers of the monitoring tests: real Pushgateway / Prometheus / exporter processes, PromQL queries,
and one real Airflow run whose StatsD lines and metadata database the tests share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
DASHBOARDS = REPO / "dashboards"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if not found:
        pytest.fail(f"{name} is not installed (Debian package {name}; .ci/run installs it)")
    return found


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local test services
        return r.read().decode()


@contextmanager
def service(argv: list[str], health_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run ``argv`` in its own process group until the block ends; wait for ``health_url`` first."""
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                http_get(health_url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{argv[0]} did not start; log:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextmanager
def pushgateway(tmp: Path, port: int | None = None) -> Iterator[str]:
    """A real Pushgateway (on a free port unless given); yields its URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    # Debian's default persistence file is shared by every Pushgateway on the machine: use our own.
    argv = [
        binary("prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={tmp / f'pushgateway-{port}.data'}",
    ]
    with service(argv, f"{url}/-/healthy", tmp / f"pushgateway-{port}.log"):
        yield url


def gateway_samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples named ``name`` on a Pushgateway: sorted label items (job/instance dropped) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(http_get(f"{url}/metrics")):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))] = s.value
    return out


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> dict:
        """``/api/v1/query``; returns the JSON answer (``status``, ``data`` or ``error``)."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/query", data=data)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: the error is in the JSON body
            return json.loads(e.read())

    def vector(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        if answer["data"]["resultType"] == "scalar":
            return {(): float(result[1])}
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}

    def wait_for(self, expr: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = self.vector(expr)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(1.0)


@contextmanager
def prometheus(tmp: Path, config_text: str, port: int | None = None) -> Iterator[Prometheus]:
    """A real Prometheus with ``config_text`` (on a free port unless given)."""
    port = port or free_port()
    root = tmp / f"prometheus-{port}"
    (root / "data").mkdir(parents=True)
    config = root / "prometheus.yml"
    config.write_text(config_text)
    argv = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with service(argv, f"{url}/-/ready", root / "prometheus.log"):
        yield Prometheus(url)


# --------------------------------------------------------------------------------------------
# One real Airflow run, shared by the tests: a DAG with a task that succeeds, one in a task
# group that succeeds, and one that fails, run with dag.test() against a SQLite metadata
# database, StatsD on and pointed at a UDP socket of the test.
# --------------------------------------------------------------------------------------------

PROBE_DAG_ID = "sclake_metrics_probe"
PROBE_DAG = textwrap.dedent(
    f'''
    from airflow.sdk import dag, task, task_group


    @dag(dag_id="{PROBE_DAG_ID}", schedule=None, catchup=False)
    def probe():
        @task
        def extract():
            return 21

        @task_group(group_id="grp")
        def grp(x):
            @task
            def double(v):
                return 2 * v

            return double(x)

        @task(retries=0)
        def explode(v):
            raise RuntimeError(f"probe failure after {{v}}")

        explode(grp(extract()))


    probe()
    '''
)

# The scheduler initialises the core Stats backend before its loop (SchedulerJobRunner);
# DagRun.update_state, which dag.test() calls, then sends dagrun.duration.<state>.<dag_id>.
RUN_PROBE = textwrap.dedent(
    f"""
    from airflow._shared.observability.metrics import stats
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.observability.metrics import stats_utils

    stats.initialize(
        factory=stats_utils.get_stats_factory(), export_legacy_names=conf.getboolean("metrics", "legacy_names_on")
    )
    bag = DagBag(conf.get("core", "dags_folder"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag("{PROBE_DAG_ID}").test()
    print("DAG_RUN_STATE", run.state)
    """
)


@dataclass(frozen=True)
class AirflowProbe:
    home: Path
    db: Path
    lines: list[str]
    state: str


def _airflow_env(home: Path, dags: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def run_airflow_probe(root: Path) -> AirflowProbe:
    """Run the probe DAG once under ``root`` (reused when already done there)."""
    done = root / "probe.json"
    if done.is_file():
        data = json.loads(done.read_text())
        return AirflowProbe(Path(data["home"]), Path(data["db"]), data["lines"], data["state"])
    home, dags = root / "airflow", root / "dags"
    home.mkdir(parents=True, exist_ok=True)
    dags.mkdir(exist_ok=True)
    (dags / "probe.py").write_text(PROBE_DAG)
    env = _airflow_env(home, dags)
    airflow = str(Path(sys.executable).with_name("airflow"))
    r = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    lines: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            lines.extend(data.decode().splitlines())

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    env.update(
        AIRFLOW__METRICS__STATSD_ON="True",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(sock.getsockname()[1]),
        AIRFLOW__METRICS__STATSD_PREFIX="airflow",
    )
    r = subprocess.run([sys.executable, "-c", RUN_PROBE], env=env, capture_output=True, text=True, timeout=600)
    time.sleep(1.0)  # the last datagrams
    stop.set()
    rx.join(5)
    sock.close()
    (root / "probe.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    state = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("DAG_RUN_STATE"))
    probe = AirflowProbe(home, home / "airflow.db", lines, state)
    done.write_text(json.dumps({"home": str(home), "db": str(probe.db), "lines": lines, "state": state}))
    return probe
