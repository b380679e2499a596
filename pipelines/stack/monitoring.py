"""Monitoring services of the embedded stack: Pushgateway, node-exporter, the Airflow exporter, Prometheus.

Prometheus, the Pushgateway and node-exporter are the Debian programs (packages
``prometheus``, ``prometheus-pushgateway``, ``prometheus-node-exporter``); each one that is
not installed is reported as such by ``sclake stack up`` and left out of Prometheus's
scrape configuration. The Airflow exporter (:mod:`pipelines.airflow_exporter`) runs with
this environment's Python and reads ``$SCLAKE_HOME/airflow/airflow.db``.

State lives in ``$SCLAKE_HOME/prometheus``: ``prometheus.yml`` (rendered from
``monitoring/prometheus/embedded.yml.in``), ``data/`` (the TSDB) and ``pushgateway.state``
(the Pushgateway's persistence file, so that the pipeline totals survive a restart).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from string import Template

import yaml

from pipelines.settings import Settings
from pipelines.stack.process import Service

APT_HINT = "Install it with `apt-get install {pkg}` (Debian/Ubuntu) to have it started by `sclake stack up`."


def monitoring_dir() -> Path:
    """The project's ``monitoring/`` folder (``$SCLAKE_MONITORING_DIR`` overrides)."""
    env = os.environ.get("SCLAKE_MONITORING_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2] / "monitoring"


def find_binary(*names: str) -> str | None:
    """The first of ``names`` found on ``PATH`` or in ``/usr/bin``."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
        if found:
            return found
    return None


def prometheus_dir(settings: Settings) -> Path:
    return settings.home / "prometheus"


def _addr(settings: Settings, port: int) -> str:
    return f"{settings.stack_host}:{port}"


def render_prometheus_config(settings: Settings, jobs: set[str] | None = None) -> str:
    """The embedded Prometheus configuration, keeping only the scrape jobs named in ``jobs``.

    Parameters
    ----------
    settings
        Ports and host of the embedded services.
    jobs
        Job names to keep (``prometheus``, ``pushgateway``, ``airflow-exporter``,
        ``node-exporter``); ``None`` keeps all.
    """
    template = Template((monitoring_dir() / "prometheus" / "embedded.yml.in").read_text())
    text = template.substitute(
        rules_dir=str(monitoring_dir() / "prometheus" / "rules"),
        prometheus=_addr(settings, settings.stack_prometheus_port),
        pushgateway=_addr(settings, settings.stack_pushgateway_port),
        airflow_exporter=_addr(settings, settings.stack_airflow_exporter_port),
        node_exporter=_addr(settings, settings.stack_node_exporter_port),
    )
    if jobs is None:
        return text
    config = yaml.safe_load(text)
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] in jobs]
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(config, sort_keys=False)


def pushgateway_service(settings: Settings) -> Service:
    state = prometheus_dir(settings) / "pushgateway.state"
    return Service(
        name="pushgateway",
        argv=[
            find_binary("prometheus-pushgateway", "pushgateway"),
            f"--web.listen-address={_addr(settings, settings.stack_pushgateway_port)}",
            f"--persistence.file={state}",
            "--persistence.interval=30s",
        ],
        host=settings.stack_host,
        port=settings.stack_pushgateway_port,
        health_url=f"http://{_addr(settings, settings.stack_pushgateway_port)}/-/healthy",
        optional=True,
        prepare=lambda: state.parent.mkdir(parents=True, exist_ok=True),
        install_hint=APT_HINT.format(pkg="prometheus-pushgateway"),
    )


def node_exporter_service(settings: Settings) -> Service:
    return Service(
        name="node-exporter",
        argv=[
            find_binary("prometheus-node-exporter", "node_exporter"),
            f"--web.listen-address={_addr(settings, settings.stack_node_exporter_port)}",
        ],
        host=settings.stack_host,
        port=settings.stack_node_exporter_port,
        health_url=f"http://{_addr(settings, settings.stack_node_exporter_port)}/metrics",
        optional=True,
        install_hint=APT_HINT.format(pkg="prometheus-node-exporter"),
    )


def airflow_exporter_service(settings: Settings) -> Service:
    db = settings.home / "airflow" / "airflow.db"
    return Service(
        name="airflow-exporter",
        argv=[
            sys.executable,
            "-m",
            "pipelines.airflow_exporter",
            "--db",
            str(db),
            "--host",
            settings.stack_host,
            "--port",
            str(settings.stack_airflow_exporter_port),
        ],
        host=settings.stack_host,
        port=settings.stack_airflow_exporter_port,
        health_url=f"http://{_addr(settings, settings.stack_airflow_exporter_port)}/metrics",
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def prometheus_service(settings: Settings, jobs: set[str]) -> Service:
    root = prometheus_dir(settings)
    config = root / "prometheus.yml"

    def prepare() -> None:
        (root / "data").mkdir(parents=True, exist_ok=True)
        config.write_text(render_prometheus_config(settings, jobs))

    return Service(
        name="prometheus",
        argv=[
            find_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            "--storage.tsdb.retention.time=15d",
            # no --web.enable-lifecycle: whoever reaches the port could stop Prometheus (/-/quit)
            f"--web.listen-address={_addr(settings, settings.stack_prometheus_port)}",
        ],
        host=settings.stack_host,
        port=settings.stack_prometheus_port,
        health_url=f"http://{_addr(settings, settings.stack_prometheus_port)}/-/ready",
        optional=True,
        prepare=prepare,
        install_hint=APT_HINT.format(pkg="prometheus"),
    )


def monitoring_services(settings: Settings) -> list[Service]:
    """The monitoring services in start order (Prometheus last, scraping those that are installed)."""
    targets = [pushgateway_service(settings), node_exporter_service(settings), airflow_exporter_service(settings)]
    jobs = {"prometheus"} | {s.name for s in targets if s.available}
    return [*targets, prometheus_service(settings, jobs)]


METRICS_PACKAGES = "prometheus prometheus-pushgateway prometheus-node-exporter"
_BINARIES = {"prometheus": ("prometheus",), "pushgateway": ("prometheus-pushgateway", "pushgateway")}


def metrics_off_note() -> str | None:
    """One line when the embedded stack keeps no metrics (Prometheus or the Pushgateway missing), else None."""
    missing = [name for name in ("prometheus", "pushgateway") if not find_binary(*_BINARIES[name])]
    if not missing:
        return None
    return (
        f"Metrics are OFF: {' and '.join(missing)} not installed, so no step or Airflow metrics are kept. "
        f"To turn them on (Debian/Ubuntu): `sudo apt-get install {METRICS_PACKAGES}`, then `sclake stack up` again."
    )


def monitoring_notes(settings: Settings) -> list[str]:
    """Lines for ``sclake stack up``: where to look at the metrics, or that there are none."""
    notes = []
    if find_binary("prometheus"):
        notes.append(f"Prometheus: http://{_addr(settings, settings.stack_prometheus_port)} (alerts under /alerts)")
    off = metrics_off_note()
    if off:
        notes.append(off)
    return notes
