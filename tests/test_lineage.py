"""Lineage end to end: a real ingest, validation and embedding, logged to MLflow and read back from the lake."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings

pytestmark = pytest.mark.slow

MODEL = "gf-6L-10M-i2048"
UPLOAD_KEY = "incoming/lab/pbmc-small.h5ad"
AIRFLOW = {"dag_id": "sclake_embed", "run_id": "manual__2026-01-01T00:00:00", "task_id": "lineage"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Upload → ingest → validate → embed (tiny synthetic model) → lineage, once for the module."""
    from distributed import Client

    from pipelines.embed import embed_dataset
    from pipelines.ingest import ingest
    from pipelines.lineage import log_embedding_run, log_ingest_run
    from pipelines.models import synthesize
    from pipelines.sample import write_sample
    from pipelines.validate import validate_dataset, validate_embeddings

    tmp = tmp_path_factory.mktemp("lineage")
    settings = Settings(
        home=tmp / "home",
        lake_uri=f"file://{tmp / 'lake'}",
        models_dir=tmp / "models",
        pushgateway_url=None,
        part_cells=64,
        shard_cells=32,
    )
    synthesize(settings, MODEL, tiny=True)
    lake = Lake(settings)
    lake.put(write_sample(tmp / "pbmc-small.h5ad", cells=150, genes=800, seed=3), UPLOAD_KEY)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        ingested = ingest(settings, UPLOAD_KEY, client=client)
        checks = validate_dataset(settings, ingested.dataset_id, model=MODEL, client=client)
    embedded = embed_dataset(settings, ingested.dataset_id, MODEL, device="cpu")
    output_checks = validate_embeddings(settings, ingested.dataset_id, MODEL)
    ingest_run = log_ingest_run(settings, ingested, upload_key=UPLOAD_KEY, validation=checks)
    embed_run = log_embedding_run(
        settings, ingested.dataset_id, MODEL, embedded, parent_run_id=ingest_run, airflow=AIRFLOW
    )
    return {
        "settings": settings,
        "dataset_id": ingested.dataset_id,
        "ingested": ingested,
        "checks": checks,
        "output_checks": output_checks,
        "embedded": embedded,
        "ingest_run": ingest_run,
        "embed_run": embed_run,
        "tmp": tmp,
    }


def _client(settings: Settings):
    from pipelines.lineage.tracking import get_client

    return get_client(settings)


def _artifact(client, run_id: str, path: str, tmp: Path) -> bytes:
    local = client.download_artifacts(run_id, path, str(tmp))
    return Path(local).read_bytes()


def test_embedding_run_holds_every_field(pipeline: dict, tmp_path: Path) -> None:
    from pipelines.models import model_files, read_manifest

    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    client = _client(settings)
    run = client.get_run(pipeline["embed_run"])
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"

    # the input: source raw/<id>.h5ad, digest = the dataset id, schema of obs
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == dataset_id
    assert json.loads(inp.dataset.source)["uri"].endswith(f"/raw/{dataset_id}.h5ad")
    schema = {c["name"]: c["type"] for c in json.loads(inp.dataset.schema)["mlflow_colspec"]}
    assert schema["cell_id"] == "string" and schema["cell_type"] == "string"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "embedding"

    # the model: name, version, every file's checksum, synthetic weights
    manifest = read_manifest(model_files(settings, MODEL))
    assert params["model_name"] == MODEL and params["model.version"] == "v1"
    assert params["model.synthetic"] == "true" and tags["sclake.model.synthetic"] == "true"
    for rel, entry in manifest["files"].items():
        assert params[f"model.files.{rel}.sha256"] == entry["sha256"]

    # how it ran: profile, precision, device, token budget, tokenizer; package versions; Airflow ids
    from pipelines.embed.tokenizer import TOKENIZER_VERSION
    from pipelines.profiles import get_profile

    embedded = pipeline["embedded"]
    assert params["profile"] == MODEL and params["profile.device_class"] == get_profile(MODEL).device_class
    assert params["device"] == "cpu" and params["precision"] == embedded.precision
    assert params["attention"] == embedded.attention and embedded.attention in ("fused", "blocks")  # by the CPU
    assert params["token_budget"] == str(embedded.token_budget) == params["profile.token_budget.cpu"]
    assert params["tokenizer_version"] == TOKENIZER_VERSION
    for pkg in ("sclake", "helical", "torch"):
        assert params[f"versions.{pkg}"] not in ("", "not installed")
    assert {k: tags[f"airflow.{k}"] for k in AIRFLOW} == AIRFLOW
    assert tags["mlflow.parentRunId"] == pipeline["ingest_run"]
    assert tags["sclake.kind"] == "embedding" and tags["sclake.dataset_id"] == dataset_id

    # metrics
    lake = Lake(settings)
    parts = lake.ls(PATHS.embeddings(MODEL, dataset_id), suffix=".parquet")
    rows = 0
    for p in parts:
        with lake.open(p) as f:
            rows += pq.read_metadata(f).num_rows
    assert metrics["cells"] == rows > 0
    assert metrics["cells_per_second"] == pytest.approx(embedded.cells_per_s) and embedded.cells_per_s > 0
    assert metrics["tokens_per_second"] == pytest.approx(embedded.tokens_per_s) and embedded.tokens_per_s > 0
    assert metrics["peak_rss_bytes"] == embedded.peak_rss_bytes > 0
    assert metrics["gpu_peak_memory_bytes"] == (embedded.gpu_peak_memory_bytes or 0)  # a CPU run: 0
    stages = {k.removeprefix("stage_seconds."): v for k, v in metrics.items() if k.startswith("stage_seconds.")}
    assert stages == pytest.approx(embedded.stage_seconds) and {"tokenize", "embed", "commit"} <= set(stages)

    # artifacts: validation results, the Parquet manifest, the QC plot
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"embeddings_manifest.json", "model_files.json", "validation", "qc"} <= names
    emb_manifest = json.loads(_artifact(client, run.info.run_id, "embeddings_manifest.json", tmp_path))
    assert emb_manifest["rows"] == metrics["cells"]
    for part in emb_manifest["parts"]:
        assert part["sha256"] == lake.sha256(part["path"])
    assert [p["path"] for p in emb_manifest["parts"]] == parts
    validation = json.loads(_artifact(client, run.info.run_id, "validation/dataset/validation.json", tmp_path))
    assert validation["outcome"] == pipeline["checks"].outcome
    output = json.loads(_artifact(client, run.info.run_id, "validation/embeddings/validation.json", tmp_path))
    assert output["outcome"] == pipeline["output_checks"].outcome
    png = _artifact(client, run.info.run_id, f"qc/{MODEL}.png", tmp_path)
    assert png == lake.read_bytes(PATHS.qc_plot(dataset_id, MODEL))


def test_ingest_run(pipeline: dict) -> None:
    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    run = _client(settings).get_run(pipeline["ingest_run"])
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == dataset_id
    assert run.data.params["upload_key"] == UPLOAD_KEY
    assert run.data.metrics["zarr.n_obs"] == 150
    assert run.data.tags["validation.outcome"] == pipeline["checks"].outcome
    assert run.data.tags["sclake.kind"] == "ingest"


def test_logging_again_returns_the_same_runs(pipeline: dict) -> None:
    from pipelines.lineage import log_embedding_run, log_ingest_run, record_dataset_lineage
    from pipelines.lineage.tracking import EXPERIMENT

    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    assert log_ingest_run(settings, dataset_id) == pipeline["ingest_run"]
    assert log_embedding_run(settings, dataset_id, MODEL) == pipeline["embed_run"]
    assert record_dataset_lineage(settings, dataset_id, MODEL, upload_key=UPLOAD_KEY) == pipeline["embed_run"]
    client = _client(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`sclake.dataset_id` = '{dataset_id}'")
    assert sorted(r.data.tags["sclake.kind"] for r in runs) == ["embedding", "ingest"]


def test_qc_plot_is_a_valid_image(pipeline: dict) -> None:
    from PIL import Image

    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    data = Lake(settings).read_bytes(PATHS.qc_plot(dataset_id, MODEL))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8  # points in several colours, not a blank canvas


def test_lineage_matches_the_lake(pipeline: dict, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pipelines.lineage import dataset_lineage
    from pipelines.query import connect
    from pipelines.validate import read_summary

    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    lake = Lake(settings)
    chain = dataset_lineage(settings, dataset_id)
    assert chain["upload"]["key"] == UPLOAD_KEY
    assert chain["raw"]["exists"] and chain["raw"]["bytes"] == lake.size(PATHS.raw(dataset_id))
    assert chain["zarr"]["published"] and chain["zarr"]["n_obs"] == 150
    assert chain["zarr"]["parts"] == pipeline["ingested"].n_parts == 3
    assert chain["validation"]["outcome"] == read_summary(lake, dataset_id)["outcome"]
    (emb,) = chain["embeddings"]
    con = connect(settings)
    rows = con.execute("SELECT count(*) FROM embeddings WHERE dataset_id = ? AND model = ?", [dataset_id, MODEL])
    assert emb["rows"] == rows.fetchone()[0]
    assert emb["parts"] == len(lake.ls(PATHS.embeddings(MODEL, dataset_id), suffix=".parquet"))
    assert emb["mlflow_run_id"] == pipeline["embed_run"]
    assert emb["mlflow_parent_run_id"] == pipeline["ingest_run"]
    assert chain["mlflow"]["ingest_run_id"] == pipeline["ingest_run"]
    assert emb["qc_plot"] == lake.url(PATHS.qc_plot(dataset_id, MODEL))

    monkeypatch.setenv("SCLAKE_HOME", str(settings.home))
    monkeypatch.setenv("SCLAKE_LAKE_URI", settings.lake_uri)
    assert main(["lineage", dataset_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(chain, default=str))
    assert main(["lineage", dataset_id]) == 0
    text = capsys.readouterr().out
    for expected in (UPLOAD_KEY, pipeline["ingest_run"], pipeline["embed_run"], MODEL, f"raw/{dataset_id}.h5ad"):
        assert expected in text
    assert main(["lineage", "0000000000000000"]) == 1
    assert "is not in the lake" in capsys.readouterr().err
    assert main(["lineage", "not-an-id"]) == 2  # a usage error: the usage line, then the reason
    err = capsys.readouterr().err
    assert err.startswith("Usage: sclake lineage ") and "16 lowercase hex digits" in err


def test_cells_view_and_similar_on_real_embeddings(pipeline: dict) -> None:
    from pipelines.query import connect
    from pipelines.similar import find_similar

    settings, dataset_id = pipeline["settings"], pipeline["dataset_id"]
    con = connect(settings)
    assert con.execute("SELECT count(*) FROM cells WHERE dataset_id = ?", [dataset_id]).fetchone()[0] == 150
    assert Lake(settings).is_published(PATHS.cells(dataset_id))
    cell = con.execute("SELECT cell_id FROM embeddings ORDER BY cell_id LIMIT 1").fetchone()[0]
    result = find_similar(settings, MODEL, cell, k=5, con=con)
    assert result.neighbors[0]["cell_id"] == cell and result.neighbors[0]["distance"] < 1e-6


def test_airflow_ids_from_the_task_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.lineage.record import airflow_ids

    for name in ("DAG_ID", "DAG_RUN_ID", "TASK_ID", "TRY_NUMBER"):
        monkeypatch.delenv(f"AIRFLOW_CTX_{name}", raising=False)
    assert airflow_ids() == {}
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "sclake_ingest")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__x")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "ingest")
    assert airflow_ids() == {"dag_id": "sclake_ingest", "run_id": "scheduled__x", "task_id": "ingest"}
    assert airflow_ids({"dag_id": "d", "run_id": "r", "task_id": "t", "other": 1}) == {
        "dag_id": "d",
        "run_id": "r",
        "task_id": "t",
    }


@pytest.mark.integration
def test_default_stack_mlflow_server_and_s3_lake(pipeline: dict, tmp_path: Path, monkeypatch) -> None:
    """With the embedded stack up, runs go to its MLflow server (artifacts proxied) and the lake is on its S3."""
    from pipelines.lineage import dataset_lineage, log_embedding_run
    from pipelines.settings import load_settings
    from pipelines.stack import services
    from tests.conftest import free_port

    home = tmp_path / "home"
    monkeypatch.setenv("SCLAKE_HOME", str(home))
    monkeypatch.setenv("SCLAKE_STACK_MLFLOW_PORT", str(free_port()))
    monkeypatch.setenv("SCLAKE_STACK_S3_PORT", str(free_port()))
    monkeypatch.setenv("SCLAKE_STACK_ONLY", "s3,mlflow")
    # On a loaded test machine the server's first start (imports, database migrations) can take minutes.
    made = services.mlflow_service
    monkeypatch.setattr(services, "mlflow_service", lambda s: dataclasses.replace(made(s), startup_timeout=600.0))
    stack = load_settings()
    services.up(stack)
    try:
        settings = load_settings(models_dir=pipeline["settings"].models_dir)  # what the stack wrote to stack.env
        assert settings.mlflow_tracking_uri and settings.mlflow_tracking_uri.startswith("http://")
        assert settings.is_s3
        lake = Lake(settings)
        local = pipeline["tmp"] / "lake"
        for path in sorted(p for p in local.rglob("*") if p.is_file() and "_staging" not in p.parts):
            lake.fs.put_file(str(path), lake.path(path.relative_to(local).as_posix()))
        dataset_id = pipeline["dataset_id"]
        run_id = log_embedding_run(settings, dataset_id, MODEL, pipeline["embedded"])
        assert run_id != pipeline["embed_run"]  # another tracking store: new runs; the lake records now point there
        client = _client(settings)
        run = client.get_run(run_id)
        assert run.inputs.dataset_inputs[0].dataset.digest == dataset_id
        assert json.loads(run.inputs.dataset_inputs[0].dataset.source)["uri"] == lake.url(PATHS.raw(dataset_id))
        assert client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags["sclake.kind"] == "ingest"
        assert _artifact(client, run_id, f"qc/{MODEL}.png", tmp_path).startswith(b"\x89PNG")
        assert list((home / "mlflow" / "artifacts").rglob(f"{MODEL}.png")), "the server stores the artifacts"
        chain = dataset_lineage(settings, dataset_id)
        assert chain["embeddings"][0]["mlflow_run_id"] == run_id
        assert chain["mlflow"]["tracking_uri"] == settings.mlflow_tracking_uri
        assert chain["embeddings"][0]["rows"] == run.data.metrics["cells"]
    finally:
        services.down(stack)


# --- the upload key, in one form ------------------------------------------------------------------


def test_upload_key_is_the_lake_key(tmp_path: Path) -> None:
    from pipelines.lineage.chain import upload_key

    file_lake = Lake(Settings(home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}"))
    s3_lake = Lake(
        Settings(
            home=tmp_path / "home", lake_uri="s3://lake/pre", s3_endpoint_url="http://127.0.0.1:9", s3_access_key="k"
        )
    )
    for lake in (file_lake, s3_lake):
        for given in ("incoming/x.h5ad", "incoming//x.h5ad", lake.url("incoming/x.h5ad")):
            assert upload_key(lake, given) == "incoming/x.h5ad", given
        assert upload_key(lake, "incoming/lab/./x.h5ad") == "incoming/lab/x.h5ad"
        assert upload_key(lake, None) is None
    assert upload_key(file_lake, f"{tmp_path / 'lake'}/incoming/x.h5ad") == "incoming/x.h5ad"
    # uploads from outside the lake keep their path or URI
    assert upload_key(file_lake, "/data/x.h5ad") == "/data/x.h5ad"
    assert upload_key(s3_lake, "/data/x.h5ad") == "/data/x.h5ad"
    assert upload_key(s3_lake, "s3://other/incoming/x.h5ad") == "s3://other/incoming/x.h5ad"
    assert upload_key(s3_lake, "file:///data/x.h5ad") == "file:///data/x.h5ad"


def test_lineage_shows_a_quarantined_upload_by_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import hashlib

    from pipelines.lineage import dataset_lineage, render_lineage
    from pipelines.quarantine import quarantine

    settings = Settings(home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}", pushgateway_url=None)
    lake = Lake(settings)
    key = "incoming/lab/broken.h5ad"
    data = b"not an h5ad\n"
    lake.write_bytes(key, data)
    dataset_id = hashlib.sha256(data).hexdigest()[:16]
    # what the ingest step records: the upload's lake URL
    reason = {"stage": "ingest", "code": "not_hdf5", "reason": "not an HDF5/.h5ad file", "hint": "upload an .h5ad"}
    quarantine(settings, dataset_id, reason, key, upload=lake.url(key))
    chain = dataset_lineage(settings, dataset_id)
    assert chain["upload"]["key"] == key
    assert chain["quarantine"]["source"] == key
    text = render_lineage(chain)
    assert f"upload      {key}" in text and lake.url(key) not in text

    monkeypatch.setenv("SCLAKE_HOME", str(settings.home))
    monkeypatch.setenv("SCLAKE_LAKE_URI", settings.lake_uri)
    assert main(["lineage", dataset_id, "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["upload"]["key"] == key and lake.url(key) not in out
