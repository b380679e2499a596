"""The pipeline on a Dask cluster that shares nothing with the driver but the lake.

The scheduler and workers are the embedded stack's services, started as separate processes
in a folder of their own (their working directory and TMPDIR), without the driver's
environment: the driver runs in another folder with another TMPDIR, finds its models through
``CACHE_DIR_HELICAL_PREFIX`` (which the workers do not have) and talks to them through
``SCLAKE_DASK_ADDRESS`` only. The embeddings equal those of the same steps without a cluster.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.lake import PATHS, Lake
from pipelines.orchestration import steps
from pipelines.settings import Settings
from pipelines.stack.dask import scheduler_address, scheduler_service, worker_service
from pipelines.stack.process import ProcessManager
from tests.conftest import S3Server, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_CELLS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two workers of the embedded stack, in their own folder; yields the address."""
    home = tmp_path_factory.mktemp("cluster-home")
    settings = Settings(
        home=home,
        stack_dask_scheduler_port=free_port(),
        stack_dask_dashboard_port=free_port(),
    )
    services = [scheduler_service(settings), worker_service(settings, "dask-worker", 2, "2GiB")]
    (home / "tmp").mkdir()
    pm = ProcessManager(home)
    saved = dict(os.environ)
    # The workers get none of the test process's sclake or Helical settings: only what tasks carry.
    for key in [k for k in os.environ if k.startswith(("SCLAKE_", "CACHE_DIR_HELICAL", "DASK_"))]:
        del os.environ[key]
    try:
        for svc in services:
            svc.env["TMPDIR"] = str(home / "tmp")
            pm.start(svc)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield scheduler_address(settings)
    for svc in reversed(services):
        pm.stop(svc.name)


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path, tiny_model: str) -> Path:
    """The driver's own folder, TMPDIR and Helical prefix (through the environment only)."""
    folder = tmp_path / "driver"
    (folder / "tmp").mkdir(parents=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TMPDIR", str(folder / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("CACHE_DIR_HELICAL_PREFIX", str(models_dir))
    return folder


def _settings(s3: S3Server, home: Path, dask_address: str | None) -> Settings:
    return Settings(
        home=home,
        lake_uri=f"s3://{s3.bucket}/t-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3.endpoint_url,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        pushgateway_url=None,
        mlflow_tracking_uri=None,
        dask_address=dask_address,
        part_cells=128,
        shard_cells=32,
    )


def _embeddings(settings: Settings, dataset_id: str, model: str) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    lake = Lake(settings)
    out: dict[str, np.ndarray] = {}
    for path in sorted(lake.fs.glob(lake.path(PATHS.embeddings(model, dataset_id)) + "/part-*.parquet")):
        with lake.fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["cell_id", "embedding"])
        out.update(zip(table["cell_id"].to_pylist(), np.asarray(table["embedding"].to_pylist()), strict=True))
    return out


def _task_prefixes(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout="20s", set_as_default=False) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def _pipeline(settings: Settings, key: str, model: str) -> str:
    """Ingest, validate, embed and check one upload through the steps; returns the dataset id."""
    manifest = steps.process_upload(settings, key, model=model)
    assert manifest["outcome"] in ("pass", "pass_with_warnings"), manifest
    embedded = steps.embed(settings, manifest["dataset_id"], model, device="cpu")
    assert embedded["rows"] == N_CELLS, embedded
    checked = steps.validate_embeddings(settings, manifest["dataset_id"], model)
    assert checked["outcome"] == "pass", checked
    return manifest["dataset_id"]


def test_steps_on_a_cluster_of_separate_processes(
    cluster: str, driver: Path, s3_server: S3Server, tiny_model: str
) -> None:
    from pipelines.sample import write_sample

    path = write_sample(driver / "sample.h5ad", cells=N_CELLS, genes=2000, seed=11)
    remote = _settings(s3_server, driver / "home", cluster)
    lake = Lake(remote)
    lake.fs.put(str(path), lake.path("incoming/sample.h5ad"))
    dataset_id = _pipeline(remote, "incoming/sample.h5ad", tiny_model)
    # The conversion, the validation's summaries, the tokens and the embedding ran on the cluster's workers.
    assert {"sclake-ingest", "sclake-validate", "sclake-tokenize", "sclake-embed"} <= _task_prefixes(cluster)
    # Nothing of the run was left in the driver's folder or temp folder (the workers wrote to the lake only).
    assert sorted(p.name for p in driver.iterdir()) == ["home", "sample.h5ad", "tmp"]

    local = _settings(s3_server, driver / "home", None)
    assert _pipeline(local, str(path), tiny_model) == dataset_id
    on_cluster, here = _embeddings(remote, dataset_id, tiny_model), _embeddings(local, dataset_id, tiny_model)
    assert len(on_cluster) == N_CELLS and on_cluster.keys() == here.keys()
    ids = sorted(here)
    np.testing.assert_allclose(
        np.stack([on_cluster[i] for i in ids]), np.stack([here[i] for i in ids]), rtol=1e-4, atol=1e-5
    )
