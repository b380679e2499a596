"""Cell-type annotation: train on a labelled reference in the lake, annotate every new upload.

Real components throughout: datasets go through ``sclake run``'s steps, annotators are
registered in an MLflow store, the DAG path runs Airflow's ``dag.test()``, the crash is a
process that dies, and accuracy is compared with a logistic regression on the
log-normalised expression of the same split, computed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.annotate import AnnotationError, TrainOptions, annotate_dataset, train_annotator
from pipelines.annotate.registry import ALIAS, registered_name
from pipelines.lake import PATHS, Lake
from pipelines.lineage import tracking
from pipelines.orchestration import steps
from pipelines.orchestration.flowrun import run_upload
from pipelines.query import connect
from pipelines.sample import write_sample
from pipelines.settings import Settings

SCLAKE = str(Path(sys.executable).with_name("sclake"))
MODEL = "gf-6L-10M-i2048"


def split_sample(tmp_path: Path, cells: int, genes: int, seed: int, n_ref: int) -> tuple[Path, Path, np.ndarray]:
    """One sample with cell-type programs, cut in two: the reference (labelled) and the rest,
    written as a new upload without its labels. Returns both paths and the rest's true labels."""
    full = ad.read_h5ad(write_sample(tmp_path / "full.h5ad", cells=cells, genes=genes, seed=seed))
    ref, rest = full[:n_ref].copy(), full[n_ref:].copy()
    truth = rest.obs["cell_type"].astype(str).to_numpy()
    rest.obs = rest.obs.drop(columns=["cell_type"])
    ref.write_h5ad(tmp_path / "reference.h5ad")
    rest.write_h5ad(tmp_path / "unlabelled.h5ad")
    return tmp_path / "reference.h5ad", tmp_path / "unlabelled.h5ad", truth


def expression_baseline(reference: Path, query: Path, truth: np.ndarray) -> float:
    """Accuracy of a logistic regression on log-normalised expression (CellTypist's recipe), same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def lognorm(path: Path) -> tuple[np.ndarray, ad.AnnData]:
        a = ad.read_h5ad(path)
        x = a.X.toarray()
        return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4), a

    x_ref, a_ref = lognorm(reference)
    x_query, _ = lognorm(query)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x_ref, a_ref.obs["cell_type"].astype(str).to_numpy())
    return float((clf.predict(x_query) == truth).mean())


def predictions(settings: Settings, dataset_id: str, annotator: str) -> dict[str, tuple[str, str, float]]:
    con = connect(settings)
    rows = con.execute(
        "SELECT cell_id, label, best_label, probability FROM annotations WHERE dataset_id = ? AND annotator = ?",
        [dataset_id, annotator],
    ).fetchall()
    return {c: (label, best, p) for c, label, best, p in rows}


@pytest.fixture(scope="module")
def full_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model files of the real gf-6L architecture (width 256), random weights."""
    from pipelines.models.synthesize import synthesize

    prefix = tmp_path_factory.mktemp("models-full")
    synthesize(Settings(home=prefix, models_dir=prefix), MODEL)
    return prefix


@pytest.mark.slow
def test_an_annotator_trained_on_part_of_a_sample_labels_the_rest(tmp_path: Path, full_model: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}", pushgateway_url=None,
        models_dir=full_model, models=MODEL, part_cells=256,
    )  # fmt: skip
    reference, unlabelled, truth = split_sample(tmp_path, cells=1200, genes=1000, seed=5, n_ref=800)
    ref = run_upload(settings, str(reference))
    assert ref["annotations"] == []  # nothing registered yet

    summary = train_annotator(settings, TrainOptions(ref["dataset_id"], "cell_type", MODEL, name="pbmc"))
    assert summary["registered_model"] == registered_name("pbmc") and summary["version"] == 1
    assert summary["n_train"] + summary["n_test"] == 800 and summary["width"] == 256
    assert summary["accuracy"] > summary["chance"] + 0.3

    # The rest, uploaded without labels, comes out annotated by the champion.
    query = run_upload(settings, str(unlabelled))
    (done,) = query["annotations"]
    assert (done["annotator"], done["version"], done["outcome"], done["rows"]) == ("pbmc", 1, "annotated", 400)
    got = predictions(settings, query["dataset_id"], "pbmc")
    cell_ids = ad.read_h5ad(unlabelled, backed="r").obs_names.tolist()
    assert sorted(got) == sorted(cell_ids)  # every cell once
    best = np.array([got[c][1] for c in cell_ids])
    labelled = np.array([got[c][0] != "unknown" for c in cell_ids])
    accuracy = float((best == truth).mean())
    chance = max(float((truth == c).mean()) for c in set(truth))
    baseline = expression_baseline(reference, unlabelled, truth)
    print(f"annotator accuracy {accuracy:.3f}, expression baseline {baseline:.3f}, chance {chance:.3f}")
    assert accuracy > chance + 0.4, (accuracy, chance)
    assert accuracy >= baseline - 0.1, (accuracy, baseline)
    # Cells above the threshold carry their best label; below it, ``unknown``.
    assert all((got[c][0] == got[c][1]) == (got[c][2] >= 0.5) for c in cell_ids)
    assert float((best[labelled] == truth[labelled]).mean()) >= accuracy

    # Version, lineage, QC plot and MLflow: the annotator's version is recorded everywhere.
    lake = Lake(settings)
    final = PATHS.annotations(MODEL, "pbmc", query["dataset_id"])
    (part, *_) = lake.ls(final, suffix=".parquet")
    with lake.open(part, "rb") as f:
        meta = {k.decode(): v.decode() for k, v in pq.ParquetFile(f).schema_arrow.metadata.items()}
    assert meta["encoding-type"] == "sclake.annotations" and meta["annotator_version"] == "1"
    assert meta["training_run_id"] == summary["training_run_id"]
    record = lake.read_json(PATHS.annotation_record(query["dataset_id"], MODEL, "pbmc"))
    assert lake.exists(PATHS.annotation_qc_plot(query["dataset_id"], MODEL, "pbmc"))
    client = tracking.get_client(settings)
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == query["mlflow_run_id"]  # nested under the embedding run
    assert run.data.params["annotator_version"] == "1" and run.data.metrics["cells"] == 400
    training = client.get_run(summary["training_run_id"])
    assert {"accuracy", "macro_f1", "f1.B cell"} <= set(training.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(summary["training_run_id"])}
    assert {"confusion_matrix.png", "classes.json", "evaluation.json", "annotator"} <= artifacts
    champion = client.get_model_version_by_alias(registered_name("pbmc"), ALIAS)
    assert int(champion.version) == 1 and champion.tags["sclake.width"] == "256"
    out = subprocess.run(
        [SCLAKE, "lineage", query["dataset_id"]], env=cli_env(settings), capture_output=True, text=True
    )
    assert out.returncode == 0 and "annotated   pbmc (sclake-annotator-pbmc v1): 400 cells" in out.stdout, out.stdout


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_HOME=str(settings.home),
        SCLAKE_LAKE_URI=settings.lake_uri,
        SCLAKE_MODELS_DIR=str(settings.helical_prefix()),
        SCLAKE_MODELS=settings.models,
        SCLAKE_PUSHGATEWAY_URL="",
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_PART_CELLS=str(settings.part_cells),
    )
    return env


@pytest.fixture
def labelled(settings_file: Settings, tiny_model: str, tmp_path: Path) -> tuple[Settings, str]:
    """A small embedded dataset with a constant column and a column holding a rare class."""
    settings = settings_file.model_copy(update={"models": tiny_model, "part_cells": 64})
    a = ad.read_h5ad(write_sample(tmp_path / "s.h5ad", cells=240, genes=1500, seed=2))
    a.obs["tissue"] = "blood"
    a.obs["site"] = np.where(np.arange(a.n_obs) < 3, "rare", np.where(np.arange(a.n_obs) % 2, "left", "right"))
    a.write_h5ad(tmp_path / "labelled.h5ad")
    return settings, run_upload(settings, str(tmp_path / "labelled.h5ad"))["dataset_id"]


def test_bad_references_are_refused_with_one_clear_line(labelled, tmp_path: Path) -> None:
    settings, dataset_id = labelled
    model = settings.models

    def refused(label: str, **kw) -> AnnotationError:
        with pytest.raises(AnnotationError) as e:
            train_annotator(settings, TrainOptions(dataset_id, label, kw.pop("model", model), **kw))
        assert "\n" not in str(e.value)
        return e.value

    e = refused("tissue")
    assert e.code == "one_class" and "one class in 'tissue' (only 'blood')" in str(e)
    e = refused("cell_typ")
    assert e.code == "no_label_column" and "no obs column 'cell_typ'" in str(e) and "cell_type" in str(e)
    e = refused("site")
    assert e.code == "rare_classes" and "'rare' (3)" in str(e) and "--drop-rare" in str(e)
    e = refused("cell_type", model="gf-12L-38M-i4096")
    assert e.code == "no_embeddings" and f"it has embeddings with: {model}" in str(e)
    # With --drop-rare the rare class is left out and the annotator trains on the others.
    ok = train_annotator(settings, TrainOptions(dataset_id, "site", model, name="site", drop_rare=True))
    assert ok["classes"] == ["left", "right"] and ok["version"] == 1

    # The command line: one line on stderr, exit 1; a bad option value is a usage error (exit 2).
    env = cli_env(settings)
    args = [SCLAKE, "annotate", "train", "--reference", dataset_id, "--model", model]
    r = subprocess.run([*args, "--label", "tissue"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "one class" in r.stderr
    r = subprocess.run([*args, "--label", "cell_type", "--method", "svm"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "Usage:" in r.stderr and "svm" in r.stderr, r.stderr


def test_embeddings_of_another_width_are_refused(tmp_path: Path, tiny_model: str) -> None:
    """The reference was embedded with a --tiny model; the model files were replaced since by full ones."""
    from pipelines.models.synthesize import synthesize

    models = tmp_path / "models"
    synthesize(Settings(home=models, models_dir=models), tiny_model, tiny=True)
    settings = Settings(
        home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}", pushgateway_url=None, models_dir=models,
        models=tiny_model,
    )  # fmt: skip
    dataset_id = run_upload(settings, str(write_sample(tmp_path / "s.h5ad", cells=120, genes=800, seed=4)))[
        "dataset_id"
    ]
    synthesize(Settings(home=models, models_dir=models), tiny_model, force=True)
    with pytest.raises(AnnotationError, match=r"embeddings are 32 wide, but the model files of .* are 256 wide") as e:
        train_annotator(settings, TrainOptions(dataset_id, "cell_type", tiny_model))
    assert e.value.code == "width_mismatch"


CRASH_AFTER_PARTS = """
import os, sys
from pipelines.lake import Lake
from pipelines.settings import load_settings
from pipelines.annotate import annotate_dataset

written = []
put = Lake.put_atomic

def put_then_die(self, rel, data):
    out = put(self, rel, data)
    written.append(rel)
    if len(written) == 2:
        os._exit(9)  # the process dies with two parts staged
    return out

Lake.put_atomic = put_then_die
annotate_dataset(load_settings(), sys.argv[1], sys.argv[2], replace=True)
"""


def test_a_newer_champion_reannotates_on_request_and_a_crashed_run_resumes(labelled, tmp_path: Path) -> None:
    settings, dataset_id = labelled
    model = settings.models
    lake = Lake(settings)
    v1 = train_annotator(settings, TrainOptions(dataset_id, "cell_type", model, name="types", drop_rare=True))
    (first,) = steps.annotate(settings, {"dataset_id": dataset_id, "model": model})["annotations"]
    assert (first["outcome"], first["version"], first["rows"]) == ("annotated", v1["version"], 240)
    again = steps.annotate(settings, {"dataset_id": dataset_id, "model": model})["annotations"]
    assert again[0]["outcome"] == "already"

    # A new champion (kNN this time): automatic runs leave the dataset as it is ...
    v2 = train_annotator(
        settings, TrainOptions(dataset_id, "cell_type", model, name="types", method="knn", drop_rare=True)
    )
    assert v2["version"] == 2
    (stale,) = steps.annotate(settings, {"dataset_id": dataset_id, "model": model})["annotations"]
    assert (stale["outcome"], stale["version"], stale["champion_version"]) == ("stale", 1, 2)
    final = PATHS.annotations(model, "types", dataset_id)
    assert lake.commit_info(final)["annotator_version"] == 1

    # ... and a re-annotation on request is killed after two parts, then run again: it keeps them.
    parts = len(lake.ls(PATHS.embeddings(model, dataset_id), suffix=".parquet"))
    assert parts >= 3
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_PARTS, dataset_id, model], env=cli_env(settings), capture_output=True
    )
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    assert lake.commit_info(final)["annotator_version"] == 1  # the published output is untouched
    (redone,) = annotate_dataset(settings, dataset_id, model, replace=True)
    assert (redone["outcome"], redone["version"], redone["rows"]) == ("annotated", 2, 240)
    info = lake.commit_info(final)
    assert info["annotator_version"] == 2 and info["parts_resumed"] == 2 and info["rows"] == 240
    files = lake.ls(final, suffix=".parquet")
    assert len(files) == parts
    cells = []
    for rel in files:
        with lake.open(rel, "rb") as f:
            table = pq.read_table(f)
        assert table.schema.metadata[b"annotator_version"] == b"2"
        cells += table.column("cell_id").to_pylist()
    assert len(cells) == len(set(cells)) == 240

    # The command line re-annotates on request, and says so when nothing applies.
    env = cli_env(settings)
    r = subprocess.run([SCLAKE, "annotate", "apply", dataset_id], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["outcome"] == "already"
    r = subprocess.run([SCLAKE, "annotate", "list", "--json"], env=env, capture_output=True, text=True)
    assert {row["annotator"]: row["champion_version"] for row in json.loads(r.stdout)} == {"types": 2}


@pytest.mark.integration
@pytest.mark.slow
def test_the_embedding_dag_annotates_new_uploads(tmp_path: Path, settings_s3: Settings, tiny_model: str) -> None:
    """A registered champion annotates an upload that goes through Airflow's ingest and embedding DAGs."""
    from tests.test_dags import airflow_env, dag_test

    settings = settings_s3.model_copy(update={"models": tiny_model})
    reference = write_sample(tmp_path / "reference.h5ad", cells=300, genes=1500, seed=8)
    ref_id = run_upload(settings, str(reference))["dataset_id"]
    train_annotator(settings, TrainOptions(ref_id, "cell_type", tiny_model, name="dag", drop_rare=True))

    lake = Lake(settings)
    lake.put(write_sample(tmp_path / "new.h5ad", cells=200, genes=1500, seed=8, batch=1), "incoming/lab/new.h5ad")
    env = airflow_env(
        tmp_path, settings, SCLAKE_SENSOR_TIMEOUT_S="3", SCLAKE_SENSOR_POKE_S="1", SCLAKE_MODELS=tiny_model
    )
    migrate = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    assert dag_test("sclake_ingest", env)["state"] == "success"
    (new_id,) = [p.split("/")[-1].removesuffix(".h5ad") for p in lake.ls("raw") if ref_id not in p]
    embed = dag_test("sclake_embed", env)
    assert embed["state"] == "success", embed
    group = f"embed_{tiny_model.replace('-', '_')}.dataset"
    assert embed["named"][f"{group}.annotate[{new_id}]"] == "success", embed["named"]
    info = lake.commit_info(PATHS.annotations(tiny_model, "dag", new_id))
    assert info["rows"] == 200 and info["annotator_version"] == 1
    assert len(predictions(settings, new_id, "dag")) == 200
