"""The Airflow DAGs: they import cleanly and light, and run end to end with ``dag.test()``
against the real rclone S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("dask", "distributed", "torch", "helical", "great_expectations", "anndata", "zarr", "mlflow", "transformers")


def airflow_env(tmp_path: Path, settings=None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        PYTHONPATH=str(ROOT),
        SCLAKE_HOME=str(tmp_path / "home"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if settings is not None:
        env.update(
            SCLAKE_LAKE_URI=settings.lake_uri,
            SCLAKE_S3_ENDPOINT_URL=settings.s3_endpoint_url or "",
            SCLAKE_S3_ACCESS_KEY=settings.s3_access_key or "",
            SCLAKE_S3_SECRET_KEY=settings.s3_secret_key or "",
            SCLAKE_MODELS_DIR=str(settings.helical_prefix()),
            SCLAKE_DASK_WORKERS="1",
            SCLAKE_PART_CELLS="128",
        )
    env.update(extra)
    return env


def run_py(code: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_dag_parsing_reads_no_dotenv_of_its_working_folder(tmp_path: Path) -> None:
    """A ``.env`` in the folder Airflow was started from changes nothing in the DAGs."""
    start = tmp_path / "started-here"
    start.mkdir()
    (start / ".env").write_text("SCLAKE_MODELS=from-dotenv\nSCLAKE_EXECUTION_MODE=local\n")
    code = f"""
        import json
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag({str(ROOT / "dags")!r})
        from pipelines.orchestration.dagkit import configured_models
        print(json.dumps({{"errors": list(bag.import_errors), "models": configured_models(),
                          "tasks": sorted(bag.dags["sclake_embed"].task_ids)}}))
        """
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=airflow_env(tmp_path),  # no SCLAKE_MODELS: the default, unless a .env were read
        capture_output=True,
        text=True,
        timeout=300,
        cwd=start,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    default = Settings(_env_file=None).model_list
    assert out["errors"] == [] and out["models"] == default != ["from-dotenv"]
    assert not any("from_dotenv" in t for t in out["tasks"]), out["tasks"]


@pytest.mark.parametrize("mode", ["local", "docker", "kubernetes"])
def test_dags_import_without_errors_or_heavy_modules(tmp_path: Path, mode: str) -> None:
    r = run_py(
        f"""
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag({str(ROOT / "dags")!r})
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"errors": {{k: v[-500:] for k, v in bag.import_errors.items()}},
                          "dags": sorted(bag.dag_ids), "heavy": heavy}}))
        """,
        airflow_env(tmp_path, SCLAKE_EXECUTION_MODE=mode),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    assert out["dags"] == ["sclake_embed", "sclake_ingest"]
    assert out["heavy"] == [], f"DAG files imported heavy modules at parse time: {out['heavy']}"


DAG_TEST = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag({dags!r})
assert not bag.import_errors, bag.import_errors
dag = bag.get_dag({dag_id!r})
run = dag.test()
tis = {{f"{{t.task_id}}[{{t.map_index}}]": str(t.state) for t in run.get_task_instances()}}
named = {{f"{{t.task_id}}[{{t.rendered_map_index}}]": str(t.state)
         for t in run.get_task_instances() if t.map_index >= 0}}
print(json.dumps({{"state": str(run.state), "tis": tis, "named": named}}))
"""


def dag_test(dag_id: str, env: dict[str, str], *, output: bool = False):
    r = run_py(DAG_TEST.format(dags=str(ROOT / "dags"), dag_id=dag_id), env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return (result, r.stdout + r.stderr) if output else result


@pytest.mark.integration
@pytest.mark.slow
def test_dags_end_to_end_on_s3(tmp_path: Path, settings_s3, tiny_model) -> None:
    from pipelines.sample import write_sample

    lake = Lake(settings_s3)
    good = write_sample(tmp_path / "good.h5ad", cells=300, genes=3000, seed=7)
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"this is not an HDF5 file\n" * 10)
    lake.put(good, "incoming/lab-a/good.h5ad")
    lake.put(bad, "incoming/lab-b/bad.h5ad")

    env = airflow_env(
        tmp_path, settings_s3, SCLAKE_SENSOR_TIMEOUT_S="3", SCLAKE_SENSOR_POKE_S="1", SCLAKE_MODELS=tiny_model
    )
    r = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]

    ingest, log = dag_test("sclake_ingest", env, output=True)
    # The refusal is a failed task (no retry) named by its upload, with the reason code and
    # what to do; the good upload of the same run is published all the same.
    assert ingest["state"] == "failed", ingest
    named = ingest["named"]
    assert named["process_upload.publish[incoming/lab-b/bad.h5ad]"] == "failed", named
    assert named["process_upload.publish[incoming/lab-a/good.h5ad]"] == "success", named
    assert named["process_upload.ingest[incoming/lab-a/good.h5ad]"] == "success", named
    assert "refused incoming/lab-b/bad.h5ad: [" in log and "what to do:" in log, log[-3000:]
    # Each step's log line appears once, at its own level (no second copy on stderr).
    ingested = [
        line
        for line in log.splitlines()
        if "quarantined s3://" in line and "bad.h5ad" in line and "pipelines.orchestration.steps" in line
    ]
    assert len(ingested) == 1, "\n".join(ingested)
    raw = lake.ls("raw")
    assert len(raw) == 1
    good_id = raw[0].split("/")[-1].removesuffix(".h5ad")
    quarantined = lake.ls("quarantine", recursive=True)
    assert any(p.endswith("reason.json") for p in quarantined)
    assert any(p.endswith("bad.h5ad") for p in quarantined)
    assert lake.ls("incoming", recursive=True) == []
    assert lake.is_published(PATHS.zarr(good_id))

    embed = dag_test("sclake_embed", env)
    assert embed["state"] == "success", embed
    assert f"embed_{tiny_model.replace('-', '_')}.dataset.embed[{good_id}]" in embed["named"], embed["named"]
    prefix = PATHS.embeddings(tiny_model, good_id)
    assert lake.is_published(prefix)
    rows = lake.commit_info(prefix)["rows"]
    assert rows == 300
    parts = lake.ls(prefix, suffix=".parquet")
    assert parts

    # A run with no new uploads does nothing (the sensor times out and the run is skipped).
    before = lake.ls("", recursive=True)
    idle = dag_test("sclake_ingest", env)
    assert idle["tis"]["wait_for_uploads[-1]"].endswith("skipped"), idle
    assert lake.ls("", recursive=True) == before

    # The same bytes under another name: recognised, no new dataset, no new rows; its
    # publish task is skipped (a duplicate), not failed (a refusal).
    lake.put(good, "incoming/lab-c/copy-of-good.h5ad")
    again = dag_test("sclake_ingest", env)
    assert again["state"] == "success", again
    assert again["named"]["process_upload.publish[incoming/lab-c/copy-of-good.h5ad]"] == "skipped", again
    assert lake.ls("raw") == raw
    assert lake.ls("incoming", recursive=True) == []
    embed2 = dag_test("sclake_embed", env)
    assert embed2["state"] == "success", embed2
    assert lake.commit_info(prefix)["rows"] == rows
    assert lake.ls(prefix, suffix=".parquet") == parts


DUMP_K8S = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
bag = DagBag({dags!r})
out = []
for dag in bag.dags.values():
    for t in dag.tasks:
        if isinstance(t, KubernetesPodOperator):
            r = t.container_resources
            out.append({{"task": t.task_id, "image": t.image, "cmds": t.cmds, "arguments": t.arguments,
                        "requests": dict(r.requests or {{}}), "limits": dict(r.limits or {{}}), "pool": t.pool,
                        "mounts": [m.mount_path for m in t.volume_mounts],
                        "env": sorted(e.name for e in t.env_vars)}})
print(json.dumps({{"errors": dict(bag.import_errors), "tasks": out}}))
"""


def test_kubernetes_mode_builds_pods_from_the_profiles(tmp_path: Path) -> None:
    from pipelines.profiles import get_profile

    models = "gf-6L-10M-i2048,gf-12L-38M-i4096"
    env = airflow_env(
        tmp_path,
        SCLAKE_EXECUTION_MODE="kubernetes",
        SCLAKE_MODELS=models,
        SCLAKE_WORKER_IMAGE="registry.example/sclake-worker:1",
    )
    r = run_py(DUMP_K8S.format(dags=str(ROOT / "dags")), env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    tasks = {t["task"]: t for t in out["tasks"]}
    assert set(tasks) == {
        "process_upload.ingest",
        "process_upload.validate",
        "embed_gf_6L_10M_i2048.dataset.embed",
        "embed_gf_12L_38M_i4096.dataset.embed",
    }
    for t in tasks.values():
        assert t["image"] == "registry.example/sclake-worker:1"
        assert t["cmds"] == ["sclake"] and t["arguments"][0] == "step"
        assert "SCLAKE_S3_SECRET_KEY" in t["env"] and "SCLAKE_LAKE_URI" in t["env"]
    gpu = tasks["embed_gf_12L_38M_i4096.dataset.embed"]
    profile = get_profile("gf-12L-38M-i4096")
    assert gpu["limits"]["nvidia.com/gpu"] == str(profile.container.gpus)
    assert gpu["requests"]["memory"] == str(int(profile.container.memory))
    assert gpu["pool"] == profile.airflow_pool
    cpu = tasks["embed_gf_6L_10M_i2048.dataset.embed"]
    assert "nvidia.com/gpu" not in cpu["limits"]
    assert cpu["pool"] == get_profile("gf-6L-10M-i2048").airflow_pool
    assert tasks["process_upload.ingest"]["pool"] == "sclake_ingest"
    assert tasks["process_upload.validate"]["pool"] == "sclake_validate"
