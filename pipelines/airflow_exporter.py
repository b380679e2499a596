"""Prometheus exporter of Airflow task outcomes and DAG-run durations, read from Airflow's metadata database.

The embedded stack has no statsd-exporter (no package provides one on a plain Debian or
PyPI install), so instead of receiving Airflow's StatsD lines this exporter derives the
same counts from Airflow's own state, read-only, at every scrape:

* ``airflow_task_finished_total{dag_id,task_id,state}``: task instance tries that ended in
  ``success``, ``failed``, ``up_for_retry`` or ``skipped`` (``task_instance`` plus earlier
  tries in ``task_instance_history``), what StatsD's ``ti.finish.<dag>.<task>.<state>`` counts;
* ``airflow_task_duration_seconds{dag_id,task_id}`` and
  ``airflow_dagrun_duration_seconds{dag_id,state}``: histograms with the buckets of
  ``monitoring/statsd/mapping.yml``;
* ``airflow_scheduler_dagruns_running``: DAG runs in the running state.

Names and labels are those the statsd mapping yields in compose (ids with ``.`` written
``__`` as Airflow's StatsD names do), so one dashboard serves both. Two gauges exist only
here: ``airflow_dag_runs{dag_id,state}`` and ``airflow_dag_last_progress_timestamp_seconds``
(when a task of the DAG last ended), which the "DAG stopped making progress" alert uses.

Run: ``python -m pipelines.airflow_exporter --db $AIRFLOW_HOME/airflow.db --port 9112``
(``--db`` also takes a SQLAlchemy URL, e.g. Airflow's ``sql_alchemy_conn`` on Postgres).
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pipelines.logs import get_logger

log = get_logger(__name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
FINISHED_STATES = ("success", "failed", "up_for_retry", "skipped")
DAGRUN_FINAL_STATES = ("success", "failed")

_STATES_SQL = ", ".join(f"'{s}'" for s in FINISHED_STATES)
_TRIES_SQL = f"""
    SELECT dag_id, task_id, state, duration FROM task_instance WHERE state IN ({_STATES_SQL})
    UNION ALL
    SELECT dag_id, task_id, state, duration FROM task_instance_history WHERE state IN ({_STATES_SQL})
"""
_BUCKETS_SQL = ", ".join(
    f"SUM(CASE WHEN duration IS NOT NULL AND duration <= {b} THEN 1 ELSE 0 END)" for b in DURATION_BUCKETS
)
QUERIES = {
    "finished": f"SELECT dag_id, task_id, state, COUNT(*) FROM ({_TRIES_SQL}) t GROUP BY dag_id, task_id, state",
    "task_durations": (
        f"SELECT dag_id, task_id, COUNT(duration), SUM(duration), {_BUCKETS_SQL} "
        f"FROM ({_TRIES_SQL}) t WHERE duration IS NOT NULL GROUP BY dag_id, task_id"
    ),
    "dag_runs": "SELECT dag_id, state, COUNT(*) FROM dag_run GROUP BY dag_id, state",
    "finished_runs": (
        "SELECT dag_id, state, start_date, end_date FROM dag_run "
        "WHERE state IN ('success', 'failed') AND start_date IS NOT NULL AND end_date IS NOT NULL"
    ),
    "progress": "SELECT dag_id, MAX(end_date) FROM task_instance WHERE end_date IS NOT NULL GROUP BY dag_id",
}


def stats_id(value: str) -> str:
    """An id as Airflow writes it into legacy StatsD names (``.`` -> ``__``)."""
    return str(value).replace(".", "__")


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class AirflowDatabase:
    """Read-only access to Airflow's metadata database: a SQLite file or a SQLAlchemy URL."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.is_url = "://" in self.target
        self._engine = None

    def available(self) -> bool:
        return self.is_url or Path(self.target).is_file()

    def query(self, sql: str) -> list[tuple]:
        if not self.is_url:
            # mode=ro: never write (nor create) Airflow's database.
            with sqlite3.connect(f"file:{self.target}?mode=ro", uri=True, timeout=10) as conn:
                return conn.execute(sql).fetchall()
        from sqlalchemy import create_engine, text

        if self._engine is None:
            self._engine = create_engine(self.target, pool_pre_ping=True)
        with self._engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]


class AirflowCollector(Collector):
    """Collects the metrics above from one Airflow database at every scrape."""

    def __init__(self, db: AirflowDatabase) -> None:
        self.db = db

    def collect(self) -> Iterator[Any]:
        started = time.perf_counter()
        up = GaugeMetricFamily("airflow_exporter_db_up", "Whether the Airflow database could be read (1) or not (0).")
        try:
            if not self.db.available():
                raise FileNotFoundError(f"no Airflow database at {self.db.target!r} (yet)")
            families = list(self._families())
        except Exception as e:  # noqa: BLE001 - a scrape reports the failure instead of raising
            report = log.debug if isinstance(e, FileNotFoundError) else log.warning
            report("cannot read Airflow's database %s: %s: %s", self.db.target, type(e).__name__, e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily("airflow_exporter_scrape_duration_seconds", "Time spent reading the database.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _families(self) -> Iterator[Any]:
        finished = CounterMetricFamily(
            "airflow_task_finished",
            "Task instance tries that finished, by DAG, task and state (success, failed, up_for_retry, skipped).",
            labels=["dag_id", "task_id", "state"],
        )
        for dag_id, task_id, state, n in self.db.query(QUERIES["finished"]):
            finished.add_metric([stats_id(dag_id), stats_id(task_id), state], n)
        yield finished

        task_hist = HistogramMetricFamily(
            "airflow_task_duration_seconds",
            "Run time of task instance tries, by DAG and task.",
            labels=["dag_id", "task_id"],
        )
        for dag_id, task_id, count, total, *cumulative in self.db.query(QUERIES["task_durations"]):
            buckets = [(str(float(b)), int(c or 0)) for b, c in zip(DURATION_BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", int(count)))
            task_hist.add_metric([stats_id(dag_id), stats_id(task_id)], buckets, float(total or 0.0))
        yield task_hist

        runs: dict[str, list[float]] = {}
        for dag_id, state, start, end in self.db.query(QUERIES["finished_runs"]):
            seconds = (_as_datetime(end) - _as_datetime(start)).total_seconds()
            runs.setdefault((stats_id(dag_id), state), []).append(max(0.0, seconds))
        run_hist = HistogramMetricFamily(
            "airflow_dagrun_duration_seconds",
            "Duration of finished DAG runs, by DAG and final state (success, failed).",
            labels=["dag_id", "state"],
        )
        for (dag_id, state), values in sorted(runs.items()):
            buckets = [(str(float(b)), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            run_hist.add_metric([dag_id, state], buckets, sum(values))
        yield run_hist

        by_state = GaugeMetricFamily(
            "airflow_dag_runs", "DAG runs by DAG and current state.", labels=["dag_id", "state"]
        )
        running = 0
        for dag_id, state, n in self.db.query(QUERIES["dag_runs"]):
            by_state.add_metric([stats_id(dag_id), str(state)], n)
            running += n if state == "running" else 0
        yield by_state
        total_running = GaugeMetricFamily("airflow_scheduler_dagruns_running", "DAG runs in the running state.")
        total_running.add_metric([], running)
        yield total_running

        progress = GaugeMetricFamily(
            "airflow_dag_last_progress_timestamp_seconds",
            "Unix time a task instance of the DAG last ended.",
            labels=["dag_id"],
        )
        for dag_id, last in self.db.query(QUERIES["progress"]):
            progress.add_metric([stats_id(dag_id)], _as_datetime(last).timestamp())
        yield progress


def default_database() -> str:
    """Airflow's database: ``$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, else ``$AIRFLOW_HOME/airflow.db``."""
    import os

    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    if url:
        return url
    return str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "airflow.db")


def main(argv: list[str] | None = None) -> None:
    """Serve the metrics over HTTP until interrupted."""
    from prometheus_client import CollectorRegistry, start_http_server

    from pipelines.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.airflow_exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="SQLite file or SQLAlchemy URL (default: Airflow's own setting)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=9112, help="port to listen on")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    registry = CollectorRegistry()
    registry.register(AirflowCollector(AirflowDatabase(args.db or default_database())))
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    log.info("Airflow exporter on http://%s:%d/metrics reading %s", args.host, args.port, args.db or default_database())
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
