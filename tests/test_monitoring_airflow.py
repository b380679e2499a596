"""Airflow metrics: the StatsD lines a real Airflow 3 run sends, the statsd-exporter mapping applied
to them, and the embedded exporter (which reads Airflow's database) serving the same series."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from monitoring_support import MONITORING, PROBE_DAG_ID, AirflowProbe, run_airflow_probe

from pipelines.airflow_exporter import AirflowCollector, AirflowDatabase

pytestmark = [pytest.mark.slow]

STATSD_TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> AirflowProbe:
    return run_airflow_probe(tmp_path_factory.getbasetemp() / "airflow-probe")


# ----------------------------------------------------------------------------------------------
# statsd_exporter's mapping semantics, applied to captured lines:
# a glob rule splits the match on "." and needs as many fields as the metric name; "*" matches
# one whole field and is captured ($1, ${1}); match_metric_type filters counter/gauge/observer
# (timers "ms", histograms "h", distributions "d" are observers); the first matching glob rule
# in file order wins, then regex rules in order; action "drop" exports nothing. Timers are in
# milliseconds and observed in seconds.
# ----------------------------------------------------------------------------------------------


@dataclass
class Mapped:
    counters: dict = field(default_factory=lambda: defaultdict(float))
    gauges: dict = field(default_factory=dict)
    observations: dict = field(default_factory=lambda: defaultdict(list))
    rule_of: dict = field(default_factory=dict)  # statsd name -> matching rule (or None)


class StatsdMapper:
    def __init__(self, mapping: dict) -> None:
        self.rules = mapping["mappings"]
        self.defaults = mapping.get("defaults", {})
        for rule in self.rules:
            if self._match_type(rule) == "glob" and any("*" in f and f != "*" for f in rule["match"].split(".")):
                raise ValueError(f"partial-field globs are not used here: {rule['match']!r}")

    def _match_type(self, rule: dict) -> str:
        return rule.get("match_type", self.defaults.get("match_type", "glob"))

    def find(self, name: str, kind: str) -> tuple[dict, list[str]] | None:
        fields = name.split(".")
        for rule in self.rules:
            if self._match_type(rule) != "glob" or rule.get("match_metric_type", kind) != kind:
                continue
            pattern = rule["match"].split(".")
            if len(pattern) != len(fields):
                continue
            if all(p == "*" or p == f for p, f in zip(pattern, fields, strict=True)):
                return rule, [f for p, f in zip(pattern, fields, strict=True) if p == "*"]
        for rule in self.rules:
            if self._match_type(rule) != "regex" or rule.get("match_metric_type", kind) != kind:
                continue
            m = re.search(rule["match"], name)
            if m:
                return rule, [m.group(0), *m.groups()]
        return None

    @staticmethod
    def expand(template: str, captures: list[str]) -> str:
        return re.sub(r"\$\{?(\d+)\}?", lambda m: captures[int(m.group(1)) - 1], template)

    def apply(self, lines: list[str]) -> Mapped:
        out = Mapped()
        for line in lines:
            name, rest = line.split(":", 1)
            value_text, kind_code, *extra = rest.split("|")
            kind = STATSD_TYPES[kind_code]
            found = self.find(name, kind)
            out.rule_of[name] = found[0] if found else None
            if not found or found[0].get("action") == "drop":
                continue
            rule, captures = found
            labels = tuple(sorted((k, self.expand(v, captures)) for k, v in rule.get("labels", {}).items()))
            key = (self.expand(rule["name"], captures), labels)
            value = float(value_text)
            rate = next((float(x[1:]) for x in extra if x.startswith("@")), 1.0)
            if kind == "counter":
                out.counters[key] += value / rate
            elif kind == "gauge":
                out.gauges[key] = out.gauges.get(key, 0.0) + value if value_text[0] in "+-" else value
            else:
                out.observations[key].append(value / 1000.0 if kind_code == "ms" else value)
        return out


@pytest.fixture(scope="module")
def mapper() -> StatsdMapper:
    return StatsdMapper(yaml.safe_load((MONITORING / "statsd" / "mapping.yml").read_text()))


def _labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_airflow_sends_task_outcomes_and_dagrun_durations(probe: AirflowProbe) -> None:
    """What Airflow 3.3 sends: ti.finish per task and state from the task runner (tag-less duplicates
    too), task durations, and the run's duration from DagRun.update_state."""
    assert probe.state == "failed"
    names = {line.split(":")[0] for line in probe.lines}
    assert f"airflow.ti.finish.{PROBE_DAG_ID}.extract.success" in names
    assert f"airflow.ti.finish.{PROBE_DAG_ID}.grp__double.success" in names  # "grp.double" with "." -> "__"
    assert f"airflow.ti.finish.{PROBE_DAG_ID}.explode.failed" in names
    assert "airflow.ti.finish" in names
    assert f"airflow.dag.{PROBE_DAG_ID}.explode.duration" in names
    assert f"airflow.dagrun.duration.failed.{PROBE_DAG_ID}" in names


def test_mapping_turns_the_lines_into_labelled_series(probe: AirflowProbe, mapper: StatsdMapper) -> None:
    mapped = mapper.apply(probe.lines)
    finished = {k[1]: v for k, v in mapped.counters.items() if k[0] == "airflow_task_finished_total"}
    assert finished == {
        _labels(dag_id=PROBE_DAG_ID, task_id="extract", state="success"): 1,
        _labels(dag_id=PROBE_DAG_ID, task_id="grp__double", state="success"): 1,
        _labels(dag_id=PROBE_DAG_ID, task_id="explode", state="failed"): 1,
    }
    runs = {k[1]: v for k, v in mapped.observations.items() if k[0] == "airflow_dagrun_duration_seconds"}
    assert list(runs) == [_labels(dag_id=PROBE_DAG_ID, state="failed")]
    (seconds,) = runs[_labels(dag_id=PROBE_DAG_ID, state="failed")]
    assert 0 < seconds < 600
    tasks = {k[1] for k in mapped.observations if k[0] == "airflow_task_duration_seconds"}
    assert tasks == {_labels(dag_id=PROBE_DAG_ID, task_id=t) for t in ("extract", "grp__double", "explode")}


def test_no_outcome_or_duration_line_is_missed(probe: AirflowProbe, mapper: StatsdMapper) -> None:
    """Every legacy-named outcome/duration line hits a mapping rule that exports it."""
    mapped = mapper.apply(probe.lines)
    wanted = re.compile(
        r"^airflow\.(ti\.finish\.[^.]+\.[^.]+\.[^.]+|dagrun\.duration\.[^.]+\.[^.]+|dag\.[^.]+\.[^.]+\.duration)$"
    )
    relevant = [n for n in mapped.rule_of if wanted.match(n)]
    assert len(relevant) >= 7
    missed = [n for n in relevant if mapped.rule_of[n] is None or mapped.rule_of[n].get("action") == "drop"]
    assert not missed, f"lines the mapping does not export: {missed}"
    # The tag-less duplicates carry no dag/task: they are dropped, not exported unlabelled.
    assert mapped.rule_of["airflow.ti.finish"]["action"] == "drop"


def _exported(db: Path) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(dict)
    for family in AirflowCollector(AirflowDatabase(db)).collect():
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def test_exporter_serves_what_the_mapping_yields(probe: AirflowProbe, mapper: StatsdMapper) -> None:
    """The embedded stack's exporter, reading the same run from Airflow's database, serves the same
    series with the same values as statsd-exporter would in compose."""
    mapped = mapper.apply(probe.lines)
    exported = _exported(probe.db)
    assert exported["airflow_exporter_db_up"] == {(): 1.0}
    statsd_finished = {k[1]: v for k, v in mapped.counters.items() if k[0] == "airflow_task_finished_total"}
    assert exported["airflow_task_finished_total"] == statsd_finished
    for name in ("airflow_dagrun_duration_seconds", "airflow_task_duration_seconds"):
        counts = {k[1]: len(v) for k, v in mapped.observations.items() if k[0] == name}
        assert exported[f"{name}_count"] == counts, name
        sums = {k[1]: sum(v) for k, v in mapped.observations.items() if k[0] == name}
        for labels, total in sums.items():
            assert exported[f"{name}_sum"][labels] == pytest.approx(total, rel=0.05, abs=0.5), (name, labels)
    assert exported["airflow_dag_runs"] == {_labels(dag_id=PROBE_DAG_ID, state="failed"): 1}
    assert exported["airflow_scheduler_dagruns_running"] == {(): 0}


def test_exporter_reads_the_database_read_only(probe: AirflowProbe, tmp_path: Path) -> None:
    before = probe.db.stat().st_mtime_ns
    _exported(probe.db)
    assert probe.db.stat().st_mtime_ns == before
    missing = _exported(tmp_path / "absent.db")
    assert missing["airflow_exporter_db_up"] == {(): 0.0}
    assert not (tmp_path / "absent.db").exists()
