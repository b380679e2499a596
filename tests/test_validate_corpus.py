"""The bad-input corpus through the real ingest + validate path on the rclone S3 server.

Every upload ends up in exactly one of ``raw/`` (valid) or ``quarantine/`` (invalid, with the
right reason), byte-identical; valid ones are validated with reports and Data Docs.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from badinput import CASES, build_corpus, case, scanpy_pbmc68k
from validate_support import MODEL, client_fixture, model_prefix_fixture  # noqa: F401

from pipelines.lake import PATHS, Lake
from pipelines.orchestration.steps import process_upload
from pipelines.settings import Settings
from pipelines.validate import read_summary, validated_cells

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def flowed(s3_server, model_prefix: Path, client, corpus: dict[str, Path], tmp_path_factory) -> tuple:
    """Upload the whole corpus to ``incoming/`` of an S3 lake and run every file through the DAGs' steps."""
    home = tmp_path_factory.mktemp("home")
    settings = Settings(
        home=home,
        lake_uri=f"s3://{s3_server.bucket}/corpus-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        models_dir=model_prefix,
        models=MODEL,
        part_cells=64,
        shard_cells=16,
        pushgateway_url=None,
    )
    lake = Lake(settings)
    keys = {name: f"incoming/corpus/{name}.h5ad" for name in corpus}
    for name, path in corpus.items():
        lake.put(path, keys[name])
    results = {name: process_upload(settings, key, client=client) for name, key in keys.items()}
    return settings, results


def test_corpus_uses_scanpy_pbmc68k() -> None:
    assert scanpy_pbmc68k() is not None, "scanpy's 10x_pbmc68k_reduced.h5ad was not found"


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_case_reaches_its_outcome(flowed: tuple, corpus: dict[str, Path], name: str) -> None:
    settings, results = flowed
    expected, result = case(name), results[name]
    data = corpus[name].read_bytes()
    dataset_id = hashlib.sha256(data).hexdigest()[:16]
    assert result["dataset_id"] == dataset_id
    assert result["outcome"] == expected.outcome, result
    lake = Lake(settings)
    if expected.valid:
        assert lake.read_bytes(PATHS.raw(dataset_id)) == data
        summary = read_summary(lake, dataset_id)
        assert summary["outcome"] == expected.outcome
        assert lake.exists(f"{PATHS.validation(dataset_id)}/data_docs/index.html")
        kept = sum(len(rows) for rows in validated_cells(lake, dataset_id).values())
        assert kept == result["n_kept"] == summary["counts"]["n_kept"] > 0
        if expected.outcome == "pass_with_warnings":
            assert result["warnings"] and "dropped" in result["warnings"][0]
        return
    assert (result["stage"], result["code"]) == (expected.stage, expected.code), result
    for words in expected.reason_has:
        assert words in result["reason"], result
    assert result["hint"] and result["quarantine_path"] == f"{PATHS.quarantine(dataset_id)}/{name}.h5ad"
    reason = lake.read_json(f"{PATHS.quarantine(dataset_id)}/reason.json")
    assert {k: reason[k] for k in ("dataset_id", "source", "file", "stage", "code")} == {
        "dataset_id": dataset_id,
        "source": f"incoming/corpus/{name}.h5ad",
        "file": f"{name}.h5ad",
        "stage": expected.stage,
        "code": expected.code,
    }
    assert reason["reason"] == result["reason"] and reason["hint"] == result["hint"]
    assert lake.read_bytes(f"{PATHS.quarantine(dataset_id)}/{name}.h5ad") == data
    assert not lake.exists(PATHS.raw(dataset_id)) and not lake.is_published(PATHS.zarr(dataset_id))
    if expected.stage == "validate":  # validation results stay with the report, for the user to read
        assert read_summary(lake, dataset_id)["code"] == expected.code
        assert lake.exists(f"{PATHS.validation(dataset_id)}/data_docs/index.html")


def test_nothing_is_lost(flowed: tuple, corpus: dict[str, Path]) -> None:
    """Every upload is afterwards in exactly one of raw/ and quarantine/, byte-identical; nothing else is."""
    settings, _ = flowed
    lake = Lake(settings)
    assert lake.ls(PATHS.incoming, recursive=True) == []
    stored = {
        rel: hashlib.sha256(lake.read_bytes(rel)).hexdigest()
        for rel in lake.ls(PATHS.raw_dir, recursive=True) + lake.ls(PATHS.quarantine_dir, recursive=True)
        if not rel.endswith("/reason.json")
    }
    uploads = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in corpus.items()}
    assert sorted(stored.values()) == sorted(uploads.values())  # each upload exactly once, nothing more
    for name, digest in uploads.items():
        places = [rel for rel, d in stored.items() if d == digest]
        expected = PATHS.raw(digest[:16]) if case(name).valid else f"{PATHS.quarantine(digest[:16])}/{name}.h5ad"
        assert places == [expected], name
