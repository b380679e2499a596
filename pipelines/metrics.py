"""Pipeline metrics pushed to the Prometheus Pushgateway (``SCLAKE_PUSHGATEWAY_URL``).

Every step wraps its work in :func:`step_metrics`, which measures wall time, CPU
seconds, peak RSS (the process and its children) and peak GPU memory, counts runs,
failures and cells, and pushes them when the step ends::

    with step_metrics(settings, "embed", model="gf-6L-10M-i2048", device="cuda") as m:
        for part in parts:
            ...
            m.cells(len(part))

Totals across runs and processes
--------------------------------
A Pushgateway group holds the last value pushed for each series: pushing a run's own
counts would overwrite the previous run's. The Pushgateway therefore holds the running
totals, one group per step (``job="sclake", step=<step>``): a push reads the group's
current values, adds this run's counts to the counters, sets the gauges, and pushes the
merged group back. A file lock under ``$SCLAKE_HOME/locks`` serialises these
read-modify-write cycles between the processes that share a ``SCLAKE_HOME``; series stay
bounded (labels are the step, model, device, outcome or reason, never a run id).

Metrics never fail a step: when the Pushgateway is unreachable the step goes on and a
warning is logged. With no ``SCLAKE_PUSHGATEWAY_URL`` nothing is pushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, pushadd_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from pipelines.logs import get_logger
from pipelines.settings import Settings
from pipelines.usage import ResourceMonitor, Usage

log = get_logger(__name__)

JOB = "sclake"
STEP_LABELS = ("step", "model", "device")
PUSH_TIMEOUT_S = 5.0

#: Every metric the steps push: exposed name -> (type, help, labels besides the step's).
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sclake_step_runs_total": ("counter", "Step runs by outcome (success, failure).", ("outcome",)),
    "sclake_step_failures_total": ("counter", "Step runs that raised.", ()),
    "sclake_cells_processed_total": ("counter", "Cells a step processed.", ()),
    "sclake_step_seconds_total": ("counter", "Wall-clock seconds spent in a step, all runs.", ()),
    "sclake_step_cpu_seconds_total": ("counter", "CPU seconds of a step (process and children), all runs.", ()),
    "sclake_uploads_total": ("counter", "Uploads seen by ingest, by outcome.", ("outcome",)),
    "sclake_quarantined_total": ("counter", "Uploads moved to quarantine, by reason code.", ("reason",)),
    "sclake_annotated_cells_total": (
        "counter",
        "Cells annotated, by annotator and outcome (labelled, or unknown below the annotator's threshold).",
        ("annotator", "outcome"),
    ),
    "sclake_step_duration_seconds": ("gauge", "Wall-clock seconds of the last run of a step.", ()),
    "sclake_step_peak_rss_bytes": ("gauge", "Peak resident memory of the last run (process and children).", ()),
    "sclake_gpu_peak_memory_bytes": ("gauge", "Peak GPU memory allocated by torch in the last run.", ()),
    "sclake_step_cells_per_second": ("gauge", "Cells per second of the last run of a step.", ()),
    "sclake_embed_cells_per_second": ("gauge", "Cells per second of the last embedding run.", ()),
    "sclake_step_last_success_timestamp_seconds": ("gauge", "Unix time the last successful run ended.", ()),
}

#: Outcomes of an upload (as ``pipelines.orchestration.steps`` names them).
UPLOAD_OUTCOMES = ("ingested", "already", "quarantined")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.:-]+")
_CODE = re.compile(r"[^a-z0-9_]+")

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def label_value(value: object, *, default: str = "none", limit: int = 64) -> str:
    """A bounded, printable label value (``None`` or empty -> ``default``)."""
    text = _LABEL_VALUE.sub("_", str(value)).strip("_") if value not in (None, "") else ""
    return text[:limit] or default


def reason_code(value: object) -> str:
    """A bounded reason code: lower-case letters, digits and ``_`` (e.g. ``InputError.code``)."""
    return _CODE.sub("_", str(value or "").lower()).strip("_")[:48] or "unknown"


def _key(name: str, labels: dict[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


@dataclass
class Batch:
    """Counter increments and gauge values for one step's group, merged into the Pushgateway's totals."""

    step: str
    counters: dict[SeriesKey, float] = field(default_factory=dict)  # increments
    gauges: dict[SeriesKey, float] = field(default_factory=dict)  # values

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._check(name, "counter")
        key = _key(name, {"step": self.step, **labels})
        self.counters[key] = self.counters.get(key, 0.0) + float(value)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self._check(name, "gauge")
        self.gauges[_key(name, {"step": self.step, **labels})] = float(value)

    @staticmethod
    def _check(name: str, kind: str) -> None:
        if name not in METRICS or METRICS[name][0] != kind:
            raise ValueError(f"unknown {kind} {name!r}; known: {sorted(METRICS)}")

    def __bool__(self) -> bool:
        return bool(self.counters or self.gauges)


class StepMetrics:
    """Handle yielded by :func:`step_metrics`: count cells, uploads and quarantines of the run."""

    def __init__(self, step: str, model: str | None, device: str | None) -> None:
        self.step = label_value(step)
        self.model = label_value(model)
        self.device = label_value(device, default="cpu")
        self.n_cells = 0
        self.summary: dict[str, float | int | str] = {}
        self._events: list[tuple[str, dict[str, str], float]] = []

    def cells(self, n: int) -> None:
        """Add ``n`` cells processed by this run."""
        self.n_cells += int(n)

    def set_labels(self, *, model: str | None = None, device: str | None = None) -> None:
        """Set the model or device once the step has resolved them (e.g. ``device="auto"`` -> ``"cuda"``)."""
        if model is not None:
            self.model = label_value(model)
        if device is not None:
            self.device = label_value(device, default="cpu")

    def upload(self, outcome: str) -> None:
        """Count one upload with ``outcome`` (one of :data:`UPLOAD_OUTCOMES`)."""
        if outcome not in UPLOAD_OUTCOMES:
            raise ValueError(f"upload outcome {outcome!r} is not one of {UPLOAD_OUTCOMES}")
        self._events.append(("sclake_uploads_total", {"outcome": outcome}, 1.0))

    def quarantine(self, reason: str) -> None:
        """Count one upload sent to quarantine; ``reason`` is a short code (e.g. ``InputError.code``)."""
        self._events.append(("sclake_quarantined_total", {"reason": reason_code(reason)}, 1.0))

    def annotated(self, annotator: str, labelled: int, unknown: int) -> None:
        """Count cells an annotator labelled, and those it left ``unknown`` (below its threshold)."""
        for outcome, n in (("labelled", labelled), ("unknown", unknown)):
            labels = {"annotator": label_value(annotator), "outcome": outcome, **self.labels}
            self._events.append(("sclake_annotated_cells_total", labels, float(n)))

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.model, "device": self.device}


@contextlib.contextmanager
def step_metrics(
    settings: Settings, step: str, *, model: str | None = None, device: str | None = "cpu"
) -> Iterator[StepMetrics]:
    """Measure one run of ``step`` and push its metrics when it ends (also when it raises).

    Parameters
    ----------
    settings
        Where to push (``settings.pushgateway_url``; empty: nothing is pushed) and where
        the push lock lives (``settings.home``).
    step
        Step name, e.g. ``"ingest"``, ``"validate"``, ``"embed"``.
    model, device
        Label values; ``None`` model is recorded as ``"none"``.

    Yields
    ------
    StepMetrics
        Call ``.cells(n)`` as cells are done; after the block, ``.summary`` holds the
        measured duration, CPU seconds, peak RSS and GPU memory.

    An exception raised in the block is counted as a failure and re-raised unchanged.
    """
    m = StepMetrics(step, model, device)
    monitor: ResourceMonitor | None = ResourceMonitor()
    try:
        monitor.start()
    except Exception as e:  # noqa: BLE001 - metrics never fail a step
        log.warning("resource usage of step %r not measured: %s: %s", m.step, type(e).__name__, e)
        monitor = None
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield m
    except BaseException as e:
        error = e
        raise
    finally:
        try:
            _finish(settings, m, monitor, time.perf_counter() - started, error)
        except Exception as e:  # noqa: BLE001 - never replace the step's own outcome
            log.warning("metrics of step %r not recorded: %s: %s", m.step, type(e).__name__, e)


def _finish(
    settings: Settings, m: StepMetrics, monitor: ResourceMonitor | None, duration: float, error: BaseException | None
) -> None:
    usage = monitor.stop() if monitor is not None else Usage(0.0, 0, None)
    m.summary = {"duration_s": duration, "cells": m.n_cells, **usage.as_dict()}
    if error is not None:
        m.summary["error"] = type(error).__name__
    push(settings, _run_batch(m, duration, usage, error))


def _run_batch(m: StepMetrics, duration: float, usage: Usage, error: BaseException | None) -> Batch:
    b = Batch(m.step)
    labels = m.labels
    b.inc("sclake_step_runs_total", outcome="failure" if error is not None else "success", **labels)
    # Pushed as 0 by successful runs too: the series exists before the first failure, which is then an increase.
    b.inc("sclake_step_failures_total", 0.0 if error is None else 1.0, **labels)
    b.inc("sclake_cells_processed_total", m.n_cells, **labels)
    b.inc("sclake_step_seconds_total", duration, **labels)
    b.inc("sclake_step_cpu_seconds_total", usage.cpu_seconds, **labels)
    b.gauge("sclake_step_duration_seconds", duration, **labels)
    b.gauge("sclake_step_peak_rss_bytes", usage.peak_rss_bytes, **labels)
    if usage.gpu_peak_bytes is not None:
        b.gauge("sclake_gpu_peak_memory_bytes", usage.gpu_peak_bytes, **labels)
    if m.n_cells and duration > 0 and error is None:
        b.gauge("sclake_step_cells_per_second", m.n_cells / duration, **labels)
        if m.step == "embed":
            b.gauge("sclake_embed_cells_per_second", m.n_cells / duration, **labels)
    if error is None:
        b.gauge("sclake_step_last_success_timestamp_seconds", time.time(), **labels)
    for name, event_labels, amount in m._events:
        b.inc(name, amount, **event_labels)
    return b


def record_upload(settings: Settings, outcome: str, *, reason: str | None = None, step: str = "ingest") -> None:
    """Count one upload (outside a :func:`step_metrics` block) and push it.

    Parameters
    ----------
    outcome
        One of :data:`UPLOAD_OUTCOMES`.
    reason
        For ``outcome="quarantined"``: the reason code, also counted in ``sclake_quarantined_total``.
    """
    if outcome not in UPLOAD_OUTCOMES:
        raise ValueError(f"upload outcome {outcome!r} is not one of {UPLOAD_OUTCOMES}")
    b = Batch(label_value(step))
    b.inc("sclake_uploads_total", 1.0, outcome=outcome)
    if outcome == "quarantined":
        b.inc("sclake_quarantined_total", 1.0, reason=reason_code(reason))
    push(settings, b)


def record_quarantine(settings: Settings, reason: str, *, step: str = "validate") -> None:
    """Count one quarantined upload outside a :func:`step_metrics` block and push it."""
    b = Batch(label_value(step))
    b.inc("sclake_quarantined_total", 1.0, reason=reason_code(reason))
    push(settings, b)


def push(settings: Settings, batch: Batch) -> bool:
    """Merge ``batch`` into the step's group on the Pushgateway. Returns whether it was pushed.

    Never raises: a failure is logged as a warning (metrics must not fail a step).
    """
    url = settings.pushgateway_url
    if not url or not batch:
        return False
    try:
        with _push_lock(settings.home):
            current = read_group(url, batch.step)
            for key, value in batch.counters.items():
                current[key] = current.get(key, 0.0) + value
            current.update(batch.gauges)
            touched = {name for name, _ in batch.counters} | {name for name, _ in batch.gauges}
            registry = CollectorRegistry()
            registry.register(_Snapshot({k: v for k, v in current.items() if k[0] in touched}))
            pushadd_to_gateway(
                _gateway(url), job=JOB, grouping_key={"step": batch.step}, registry=registry, timeout=PUSH_TIMEOUT_S
            )
        return True
    except Exception as e:  # noqa: BLE001 - metrics never fail a step
        log.warning("metrics for step %r not pushed to %s: %s: %s", batch.step, url, type(e).__name__, e)
        return False


def read_group(url: str, step: str) -> dict[SeriesKey, float]:
    """The values of sclake's series in the Pushgateway group of ``step`` (empty if none)."""
    with urllib.request.urlopen(f"{_gateway(url)}/metrics", timeout=PUSH_TIMEOUT_S) as r:  # noqa: S310
        text = r.read().decode()
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name in METRICS and labels.get("job") == JOB and labels.get("step") == step:
                kept = {k: v for k, v in labels.items() if k not in ("job", "instance")}
                out[_key(sample.name, kept)] = float(sample.value)
    return out


def _gateway(url: str) -> str:
    url = url.rstrip("/")
    return url if "://" in url else f"http://{url}"


@contextlib.contextmanager
def _push_lock(home: Path) -> Iterator[None]:
    lock_dir = home / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "metrics.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Snapshot:
    """A collector exposing fixed values (no ``_created`` series, which the Pushgateway would keep)."""

    def __init__(self, values: dict[SeriesKey, float]) -> None:
        self.values = values

    def collect(self):
        by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for (name, labels), value in sorted(self.values.items()):
            by_name.setdefault(name, []).append((dict(labels), value))
        for name, series in by_name.items():
            kind, help_text, _ = METRICS[name]
            label_names = sorted({k for labels, _ in series for k in labels})
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=label_names)
            else:
                family = GaugeMetricFamily(name, help_text, labels=label_names)
            for labels, value in series:
                family.add_metric([labels.get(k, "") for k in label_names], value)
            yield family
