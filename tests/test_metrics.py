"""Pipeline metrics: pushed to a real Pushgateway, totals add up across runs and processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monitoring_support import free_port, gateway_samples, pushgateway

from pipelines.metrics import record_quarantine, record_upload, step_metrics
from pipelines.settings import Settings

RUN_STEP = textwrap.dedent(
    """
    import sys
    from pipelines.metrics import step_metrics
    from pipelines.settings import load_settings

    settings = load_settings()
    for _ in range(int(sys.argv[2])):
        with step_metrics(settings, "ingest", model=None, device="cpu") as m:
            sum(i * i for i in range(20_000))
            m.cells(int(sys.argv[1]))
    """
)


@pytest.fixture
def gateway(tmp_path: Path):
    with pushgateway(tmp_path) as url:
        yield url


@pytest.fixture
def settings(settings_file: Settings, gateway: str) -> Settings:
    return settings_file.model_copy(update={"pushgateway_url": gateway})


def _spawn(settings: Settings, cells: int, runs: int) -> subprocess.Popen:
    env = {**os.environ, "SCLAKE_HOME": str(settings.home), "SCLAKE_PUSHGATEWAY_URL": str(settings.pushgateway_url)}
    return subprocess.Popen([sys.executable, "-c", RUN_STEP, str(cells), str(runs)], env=env)


INGEST = (("device", "cpu"), ("model", "none"), ("step", "ingest"))


def test_runs_in_separate_processes_add_up(settings: Settings) -> None:
    for cells in (100, 250):
        assert _spawn(settings, cells, 1).wait(60) == 0
    assert gateway_samples(settings.pushgateway_url, "sclake_cells_processed_total") == {INGEST: 350}
    runs = gateway_samples(settings.pushgateway_url, "sclake_step_runs_total")
    assert runs == {(*INGEST[:2], ("outcome", "success"), INGEST[2]): 2}
    assert gateway_samples(settings.pushgateway_url, "sclake_step_failures_total") == {INGEST: 0}


def test_concurrent_processes_lose_no_increment(settings: Settings) -> None:
    procs = [_spawn(settings, 10, 5) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    assert gateway_samples(settings.pushgateway_url, "sclake_cells_processed_total") == {INGEST: 4 * 5 * 10}
    runs = gateway_samples(settings.pushgateway_url, "sclake_step_runs_total")
    assert sum(runs.values()) == 20


def test_step_measures_time_memory_and_cells(settings: Settings) -> None:
    with step_metrics(settings, "embed", model="gf-tiny", device="cpu") as m:
        block = bytearray(64 * 2**20)  # 64 MiB resident while the step runs
        block[::4096] = b"x" * len(block[::4096])
        m.cells(300)
        del block
    assert m.summary["cells"] == 300
    assert m.summary["peak_rss_bytes"] >= 64 * 2**20
    assert m.summary["duration_s"] > 0 and m.summary["cpu_seconds"] >= 0
    labels = (("device", "cpu"), ("model", "gf-tiny"), ("step", "embed"))
    url = settings.pushgateway_url
    assert gateway_samples(url, "sclake_cells_processed_total") == {labels: 300}
    assert gateway_samples(url, "sclake_step_peak_rss_bytes")[labels] == m.summary["peak_rss_bytes"]
    assert gateway_samples(url, "sclake_step_duration_seconds")[labels] == pytest.approx(m.summary["duration_s"])
    assert gateway_samples(url, "sclake_embed_cells_per_second")[labels] == pytest.approx(300 / m.summary["duration_s"])
    assert labels in gateway_samples(url, "sclake_step_last_success_timestamp_seconds")
    assert not gateway_samples(url, "sclake_gpu_peak_memory_bytes")  # no CUDA used


def test_children_count_in_cpu_and_peak_memory(settings: Settings) -> None:
    child = "import time\nb = bytearray(96 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\nt = time.process_time()\n"
    child += "while time.process_time() - t < 1.0: pass\n"
    with step_metrics(settings, "ingest") as m:
        subprocess.run([sys.executable, "-c", child], check=True)
    assert m.summary["cpu_seconds"] >= 0.9
    # The child's memory is sampled while it runs (it holds 96 MiB for a CPU second).
    assert m.summary["peak_rss_bytes"] >= 96 * 2**20


def test_failure_is_counted_and_reraised(settings: Settings) -> None:
    with pytest.raises(ZeroDivisionError), step_metrics(settings, "validate", device="cpu") as m:
        m.cells(5)
        _ = 1 / 0
    url = settings.pushgateway_url
    labels = (("device", "cpu"), ("model", "none"), ("step", "validate"))
    assert gateway_samples(url, "sclake_step_failures_total") == {labels: 1}
    assert gateway_samples(url, "sclake_step_runs_total") == {(*labels[:2], ("outcome", "failure"), labels[2]): 1}
    assert m.summary["error"] == "ZeroDivisionError"
    assert not gateway_samples(url, "sclake_step_last_success_timestamp_seconds")


def test_uploads_and_quarantines_have_bounded_labels(settings: Settings) -> None:
    with step_metrics(settings, "ingest") as m:
        m.upload("ingested")
        m.upload("already")
        m.quarantine("no_counts")
    record_upload(settings, "ingested")
    record_upload(settings, "quarantined", reason="not_h5ad")
    record_quarantine(settings, "bad value: <x> !")
    url = settings.pushgateway_url
    uploads = gateway_samples(url, "sclake_uploads_total")
    assert uploads == {
        (("outcome", "ingested"), ("step", "ingest")): 2,
        (("outcome", "already"), ("step", "ingest")): 1,
        (("outcome", "quarantined"), ("step", "ingest")): 1,
    }
    quarantined = gateway_samples(url, "sclake_quarantined_total")
    assert quarantined == {
        (("reason", "no_counts"), ("step", "ingest")): 1,
        (("reason", "not_h5ad"), ("step", "ingest")): 1,
        (("reason", "bad_value_x"), ("step", "validate")): 1,
    }
    with pytest.raises(ValueError, match="'later'"):
        m.upload("later")


def test_no_pushgateway_configured_is_a_no_op(settings_file: Settings) -> None:
    assert settings_file.pushgateway_url is None
    with step_metrics(settings_file, "ingest") as m:
        m.cells(3)
    assert m.summary["cells"] == 3
    assert not (settings_file.home / "locks").exists()


def test_unreachable_pushgateway_never_fails_a_step(settings_file: Settings, caplog) -> None:
    settings = settings_file.model_copy(update={"pushgateway_url": f"http://127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.WARNING), step_metrics(settings, "embed", model="m") as m:
        m.cells(1)
    assert m.summary["cells"] == 1
    assert any("not pushed" in r.getMessage() for r in caplog.records)


@pytest.mark.gpu
def test_gpu_peak_memory(settings: Settings) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    with step_metrics(settings, "embed", model="m", device="cuda") as m:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert m.summary["gpu_peak_bytes"] >= 256 * 2**20
    labels = (("device", "cuda"), ("model", "m"), ("step", "embed"))
    assert gateway_samples(settings.pushgateway_url, "sclake_gpu_peak_memory_bytes")[labels] >= 256 * 2**20
