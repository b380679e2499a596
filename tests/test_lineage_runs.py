"""MLflow runs as a user meets them: the experiment's view, runs spanning the work, a synthetic model's QC plot."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings

pytestmark = pytest.mark.slow

MODEL = "gf-6L-10M-i2048"
KEY = "incoming/lab/runs.h5ad"


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The steps as the DAGs call them, each timed from outside."""
    from pipelines.models import synthesize
    from pipelines.orchestration import steps
    from pipelines.sample import write_sample

    tmp = tmp_path_factory.mktemp("runs")
    settings = Settings(
        home=tmp / "home",
        lake_uri=f"file://{tmp / 'lake'}",
        models_dir=tmp / "models",
        pushgateway_url=None,
        part_cells=64,
        shard_cells=32,
        dask_workers=1,
    )
    synthesize(settings, MODEL, tiny=True)
    Lake(settings).put(write_sample(tmp / "runs.h5ad", cells=150, genes=800, seed=5), KEY)
    t0 = time.time()
    manifest = steps.validate_upload(settings, steps.ingest_upload(settings, KEY), model=MODEL)
    t1 = time.time()
    embedded = steps.embed(settings, manifest["dataset_id"], MODEL)
    t2 = time.time()
    lineage = steps.record_lineage(settings, manifest["dataset_id"], MODEL, embed_manifest=embedded, upload_key=KEY)
    return {"settings": settings, "manifest": manifest, "lineage": lineage, "times": (t0, t1, t2)}


def _client(settings: Settings):
    from pipelines.lineage.tracking import get_client

    return get_client(settings)


def test_the_experiment_opens_in_the_model_development_view(steps_run: dict) -> None:
    from pipelines.lineage.tracking import EXPERIMENT

    exp = _client(steps_run["settings"]).get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_span_the_steps_work_not_their_logging(steps_run: dict) -> None:
    client = _client(steps_run["settings"])
    t0, t1, t2 = (int(t * 1000) for t in steps_run["times"])
    ingest = client.get_run(steps_run["manifest"]["mlflow_ingest_run_id"]).info
    embed = client.get_run(steps_run["lineage"]["mlflow_run_id"]).info
    # The ingestion run starts when ingestion did and ends after validation.
    assert t0 <= ingest.start_time <= t0 + 1000, (t0, ingest.start_time)
    assert ingest.end_time - ingest.start_time >= 0.9 * (t1 - t0)
    # The embedding run covers the embedding step, which ended before lineage was logged.
    assert t1 <= embed.start_time <= t1 + 1000, (t1, embed.start_time)
    assert embed.end_time <= t2 + 50 and embed.end_time - embed.start_time >= 0.9 * (t2 - t1)
    run = client.get_run(steps_run["lineage"]["mlflow_run_id"])
    assert not any(k.startswith(("started_at", "finished_at")) for k in {**run.data.params, **run.data.metrics})


def test_the_qc_plot_of_a_synthetic_model_says_its_weights_are_random(steps_run: dict, tmp_path: Path) -> None:
    from PIL import Image

    from pipelines.qcplot import write_qc_plot

    settings, dataset_id = steps_run["settings"], steps_run["manifest"]["dataset_id"]
    synthetic = Image.open(io.BytesIO(Lake(settings).read_bytes(PATHS.qc_plot(dataset_id, MODEL)))).convert("RGB")
    plain = Image.open(io.BytesIO(write_qc_plot(settings, dataset_id, MODEL, synthetic=False).png)).convert("RGB")

    def red_text(image) -> int:  # pixels of the note's colour (firebrick) along the bottom edge
        pixels = np.asarray(image)[-40:].astype(int)
        return int(((abs(pixels[..., 0] - 178) < 30) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum())

    assert red_text(synthetic) > 200 and red_text(plain) == 0


def test_a_dataset_is_validated_and_announced_once(steps_run: dict) -> None:
    """The same bytes uploaded twice in one batch: whichever validation comes second finds the
    dataset validated and reports `already` (its publish task skips: one asset event)."""
    from pipelines.orchestration import steps

    settings, manifest = steps_run["settings"], steps_run["manifest"]
    twin = {"key": "incoming/lab/runs-again.h5ad", "dataset_id": manifest["dataset_id"], "outcome": "ingested"}
    again = steps.validate_upload(settings, twin, model=MODEL)
    assert again["outcome"] == "already" and "mlflow_ingest_run_id" not in again
