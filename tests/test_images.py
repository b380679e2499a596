"""The images of `make images`, built offline and run with no network.

The session fixture runs `make images` (fast when Docker's layer cache holds the layers).
Without a Docker engine the tests are skipped, except in CI (``CI`` set), where that fails.
The worker image then does the whole job on its own: `sclake run` on an .h5ad with
``--network none``, and its embeddings match Helical's own ``process_data`` +
``get_embeddings`` on the host for the same cells and model files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import deploy
from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings
from tests.docker_support import ROOT, require_docker, run_group
from tests.test_embed import cosine, read_embeddings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WORKER = deploy.WORKER_IMAGE
AIRFLOW = deploy.AIRFLOW_IMAGE
IMAGE_UID = 1000  # SCLAKE_UID of docker/worker-cpu.Dockerfile
N_CELLS = 96


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def images() -> str:
    """`make images` (the CUDA image only where its base is available); returns its output."""
    require_docker()
    r = run_group(["make", "images"], timeout=3600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout + r.stderr


def run_as() -> list[str]:
    """Run as the caller where it is not root (the lake stays theirs); root keeps the image's user."""
    return [] if os.getuid() == 0 else ["--user", f"{os.getuid()}:{os.getgid()}"]


@pytest.fixture(scope="session")
def image_models(models_dir: Path, tiny_model: str) -> Path:
    """The session's model cache, readable by any uid (the image's user mounts it read-only)."""
    for folder, _, files in os.walk(models_dir):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return models_dir


@pytest.fixture(scope="session")
def worker_run(images: str, tmp_path_factory: pytest.TempPathFactory, image_models: Path, tiny_model: str):
    """`sclake run` in the worker image, no network: the input, lake and model cache are mounted folders."""
    from pipelines.sample import write_sample

    data = tmp_path_factory.mktemp("input")
    write_sample(data / "x.h5ad", cells=N_CELLS, genes=2000, seed=11)
    lake = tmp_path_factory.mktemp("lake")
    if os.getuid() == 0:  # the image's user reads the input and writes the lake
        data.chmod(0o755)
        os.chown(lake, IMAGE_UID, IMAGE_UID)
    r = docker(
        "run", "--rm", "--network", "none", *run_as(),
        "-v", f"{data}:/input:ro", "-v", f"{lake}:/lake", "-v", f"{image_models}:/models:ro",
        "-e", "SCLAKE_LAKE_URI=file:///lake", "-e", "SCLAKE_MLFLOW_TRACKING_URI=sqlite:////lake/mlflow.db",
        WORKER, "sclake", "run", "/input/x.h5ad", "--model", tiny_model,
        timeout=1200,
    )  # fmt: skip
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    settings = Settings(
        home=lake.parent / "home", lake_uri=f"file://{lake}", models_dir=image_models, pushgateway_url=None
    )
    return summary, settings


def test_builds_use_no_network() -> None:
    """Every build runs with --network none; no Dockerfile fetches anything (apt, pip indexes, curl)."""
    script = (ROOT / "tools" / "build-images.sh").read_text()
    builds = re.findall(r"docker build[^\n]*", script)
    assert builds and all("--network none" in b for b in builds), builds
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        for fetch in ("apt-get", "curl ", "wget ", "--index-url", "uv python install", "pip download"):
            assert fetch not in text, f"{dockerfile.name} fetches with {fetch!r}"
        for install in re.findall(r"uv pip install[^\n]*", text):
            assert "--no-index" in install, f"{dockerfile.name}: {install}"


def test_make_images_says_which_base_it_used(images: str) -> None:
    assert f"built {WORKER}" in images and f"built {AIRFLOW}" in images
    for tag in (WORKER, AIRFLOW):
        base = docker("image", "inspect", "--format", '{{ index .Config.Labels "org.sclake.base-recipe" }}', tag)
        if base.stdout.strip() not in ("", "<no value>"):  # built on the local Debian base: said so
            assert "cannot be pulled" in images and "sclake-base:bookworm" in images
    if docker("image", "inspect", deploy.WORKER_CUDA_IMAGE, check=False).returncode != 0:
        assert f"{deploy.WORKER_CUDA_IMAGE} skipped" in images


def test_worker_runs_the_job_alone_and_matches_helical(worker_run, tiny_model: str) -> None:
    summary, settings = worker_run
    from pipelines.dataset import open_dataset
    from pipelines.models import load_geneformer

    dataset_id = summary["dataset_id"]
    lake = Lake(settings)
    ids, emb = read_embeddings(settings, dataset_id, tiny_model)
    assert len(ids) == N_CELLS == len(set(ids)) == summary["rows"]
    first = lake.ls(PATHS.embeddings(tiny_model, dataset_id), suffix=".parquet")[0]
    with lake.open(first, "rb") as f:
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(f).metadata or {}).items()}
    precision = {v for k, v in meta.items() if k.endswith("precision")}

    # Helical on the host, on the cells the container ingested, with the same model files.
    ds = open_dataset(lake, dataset_id)
    adata = ds.to_anndata()
    adata.var["ensembl_id"] = ds.gene_ids
    gf = load_geneformer(settings, tiny_model, batch_size=32)
    ref = np.asarray(gf.get_embeddings(gf.process_data(adata.copy(), gene_names="ensembl_id")))
    order = {cell: i for i, cell in enumerate(adata.obs_names)}
    cos = cosine(emb, ref[[order[c] for c in ids]])
    # fp32 in the container agrees to rounding; bf16 (chosen on CPUs with AVX512-BF16/AMX) to about 1e-2.
    assert cos.min() >= (0.9999 if precision <= {"fp32"} else 0.99), (cos.min(), precision)


def test_models_list_and_info_in_the_image(images: str, image_models: Path, tiny_model: str) -> None:
    mount = ["-v", f"{image_models}:/models:ro"]
    base = ["run", "--rm", "--network", "none", *run_as(), *mount, WORKER, "sclake", "models"]
    listed = docker(*base, "list").stdout
    assert tiny_model in listed
    info = docker(*base, "info", tiny_model).stdout
    assert tiny_model in info and "synthetic" in info.lower()


@pytest.mark.parametrize(("image", "user"), [(WORKER, f"{IMAGE_UID}:{IMAGE_UID}"), (AIRFLOW, "50000:0")])
def test_images_run_as_non_root_under_tini_without_compilers(images: str, image: str, user: str) -> None:
    probe = (
        'echo "$(id -u):$(id -g)"; cat /proc/1/comm; '
        "for c in gcc cc c++ g++ clang uv; do command -v $c || true; done; "
        "ls /wheels 2>/dev/null || true"
    )
    out = docker("run", "--rm", "--network", "none", image, "bash", "-c", probe).stdout.split()
    assert out[0] == user
    assert out[1] == "tini"
    assert out[2:] == [], f"{image} has compilers, uv or the wheelhouse: {out[2:]}"


def test_airflow_image_runs_airflow_commands(images: str) -> None:
    version = docker("run", "--rm", "--network", "none", AIRFLOW, "version").stdout.strip().splitlines()[-1]
    assert version == "3.3.2"
    env = docker("run", "--rm", "--network", "none", AIRFLOW, "bash", "-c", "echo $AIRFLOW_HOME; pwd").stdout.split()
    assert env == ["/opt/airflow", "/opt/airflow"]
    dags = docker(
        "run", "--rm", "--network", "none", AIRFLOW, "python", "-c",
        "from airflow.dag_processing.dagbag import DagBag; b = DagBag('/opt/sclake/dags'); "
        "print(len(b.dags), len(b.import_errors))",
    ).stdout.split()  # fmt: skip
    assert int(dags[-2]) > 0 and dags[-1] == "0", dags
