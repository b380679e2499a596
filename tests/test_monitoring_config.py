"""Prometheus configs and rules checked with promtool; the statsd mapping's own rules; the
embedded monitoring services started for real and scraped by their Prometheus."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from monitoring_support import MONITORING, binary, free_port, http_get

from pipelines import airflow_exporter
from pipelines.settings import Settings
from pipelines.stack import monitoring
from pipelines.stack.process import ProcessManager

RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def test_rules_are_valid() -> None:
    assert {p.name for p in RULES} == {"sclake.yml", "airflow.yml", "targets.yml"}
    out = promtool("check", "rules", *map(str, RULES)).stdout
    assert out.count("SUCCESS") == len(RULES)


def test_rules_unit_tests_pass() -> None:
    promtool("test", "rules", str(MONITORING / "prometheus" / "tests" / "rules_test.yml"))


def test_every_alert_is_unit_tested() -> None:
    alerts = {r["alert"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]}
    tests = (MONITORING / "prometheus" / "tests" / "rules_test.yml").read_text()
    tested = set(re.findall(r"alertname: (\w+)", tests))
    untested = alerts - tested - {"AirflowNoTaskProgress", "AirflowExporterCannotReadDatabase", "ExporterDown"}
    assert not untested, f"alerts without a promtool unit test: {sorted(untested)}"
    expected = {"SclakeStepFailed", "SclakeUploadQuarantined", "AirflowTaskFailed", "AirflowDagStalled"}
    assert expected | {"PushgatewayDown", "AirflowMetricsDown"} <= alerts


def test_compose_config_is_valid(tmp_path: Path) -> None:
    text = (MONITORING / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in text
    config = tmp_path / "prometheus.yml"
    # promtool wants the files it names: MinIO's metrics token (written by minio-init) too.
    (tmp_path / "minio").mkdir()
    (tmp_path / "minio" / "minio").write_text("token\n")
    text_here = text.replace("/etc/prometheus/rules", str(MONITORING / "prometheus" / "rules"))
    config.write_text(text_here.replace("/etc/prometheus/minio/", f"{tmp_path}/minio/"))
    out = promtool("check", "config", str(config)).stdout
    assert f"{len(RULES)} rule files found" in out
    jobs = {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}
    assert set(jobs) == {"prometheus", "pushgateway", "statsd-exporter", "node-exporter", "cadvisor", "minio"}
    assert jobs["minio"]["authorization"]["credentials_file"] == "/etc/prometheus/minio/minio"
    assert jobs["pushgateway"]["honor_labels"] is True


@pytest.mark.parametrize("jobs", [None, {"prometheus", "airflow-exporter"}])
def test_embedded_config_is_valid(tmp_path: Path, settings_file: Settings, jobs: set[str] | None) -> None:
    text = monitoring.render_prometheus_config(settings_file, jobs)
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    out = promtool("check", "config", str(config)).stdout
    assert f"{len(RULES)} rule files found" in out
    rendered = {j["job_name"] for j in yaml.safe_load(text)["scrape_configs"]}
    assert rendered == (jobs or {"prometheus", "pushgateway", "airflow-exporter", "node-exporter"})


def test_statsd_mapping_is_well_formed() -> None:
    """The checks statsd_exporter applies when it loads a mapping file, and buckets equal to the exporter's."""
    mapping = yaml.safe_load((MONITORING / "statsd" / "mapping.yml").read_text())
    metric_name = re.compile(r"^([a-zA-Z_]|\$\{?\d+\}?)([a-zA-Z0-9_]|\$\{?\d+\}?)*$")
    statsd_metric = r"[a-zA-Z_](-?[a-zA-Z0-9_])*"
    glob_line = re.compile(rf"^(\*\.|{statsd_metric}\.)+(\*|{statsd_metric})$")
    names = {}
    for m in mapping["mappings"]:
        assert metric_name.match(m["name"]), m
        assert all(re.match(r"^[a-zA-Z_][a-zA-Z0-9_]+$", k) for k in m.get("labels", {})), m
        if m.get("match_type", "glob") == "glob":
            assert glob_line.match(m["match"]), m
            captures = m["match"].split(".").count("*")
            refs = {int(n) for v in m.get("labels", {}).values() for n in re.findall(r"\$\{?(\d+)", v)}
            assert refs <= set(range(1, captures + 1)), m
        if m.get("observer_type") == "histogram":
            assert tuple(m["histogram_options"]["buckets"]) == airflow_exporter.DURATION_BUCKETS, m["name"]
        names[m["name"]] = m
    assert names["airflow_task_finished_total"]["match"] == "airflow.ti.finish.*.*.*"
    assert mapping["mappings"][-1]["action"] == "drop"


def test_missing_programs_are_reported_and_left_out(settings_file: Settings, monkeypatch) -> None:
    monkeypatch.setattr(monitoring, "find_binary", lambda *names: None)
    services = {s.name: s for s in monitoring.monitoring_services(settings_file)}
    assert list(services) == ["pushgateway", "node-exporter", "airflow-exporter", "prometheus"]
    for name in ("pushgateway", "node-exporter", "prometheus"):
        assert services[name].optional and not services[name].available
        assert "apt-get install" in services[name].install_hint
        assert ProcessManager(settings_file.home).start(services[name]) == "not installed"
    assert services["airflow-exporter"].available


@pytest.mark.integration
def test_embedded_monitoring_services_start_and_are_scraped(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        lake_uri=f"file://{tmp_path / 'lake'}",
        stack_prometheus_port=free_port(),
        stack_pushgateway_port=free_port(),
        stack_node_exporter_port=free_port(),
        stack_airflow_exporter_port=free_port(),
    )
    services = monitoring.monitoring_services(settings)
    assert all(s.available for s in services)
    pm = ProcessManager(settings.home)
    try:
        for svc in services:
            assert pm.start(svc) == "started", svc.name
        config = (settings.home / "prometheus" / "prometheus.yml").read_text()
        assert set(re.findall(r"job_name: ([\w-]+)", config)) == {
            "prometheus",
            "pushgateway",
            "airflow-exporter",
            "node-exporter",
        }
        prom = f"http://{settings.stack_host}:{settings.stack_prometheus_port}"
        deadline = time.monotonic() + 90
        while True:
            targets = yaml.safe_load(http_get(f"{prom}/api/v1/targets"))["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            if all(h == "up" for h in health.values()) and len(health) == 4 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health == dict.fromkeys(["prometheus", "pushgateway", "airflow-exporter", "node-exporter"], "up")
        # Airflow has not created its database: the exporter says so instead of failing.
        exporter = http_get(f"http://{settings.stack_host}:{settings.stack_airflow_exporter_port}/metrics")
        assert "airflow_exporter_db_up 0.0" in exporter
        assert (settings.home / "prometheus" / "pushgateway.state").parent.is_dir()
    finally:
        for svc in reversed(services):
            pm.stop(svc.name)
