"""``SCLAKE_EXECUTION_MODE=docker`` beside the embedded stack: Airflow runs every step in the
worker image through the real Docker engine (``dag.test()``, the rclone S3 server on the
host's loopback, the model cache bind-mounted read-only).

What is checked: a good and a bad upload end as embeddings and a quarantine; each step
container got the profile's memory and CPU limits and was removed afterwards; the step's
JSON result came back as XCom; a step over its memory cap fails with a message that says
so and names the profile setting to raise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines import deploy
from pipelines.lake import PATHS, Lake
from pipelines.orchestration.containers import PROFILE_LABEL, STEP_LABEL
from tests.docker_support import build_images, containers, require_docker
from tests.test_dags import ROOT, airflow_env, run_py

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

DAG_TEST = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag({dags!r})
assert not bag.import_errors, bag.import_errors
run = bag.get_dag({dag_id!r}).test()
tis = {{f"{{t.task_id}}[{{t.map_index}}]": str(t.state) for t in run.get_task_instances()}}
xcom = {{}}
for t in run.get_task_instances():
    if t.task_id.endswith(".ingest") or t.task_id.endswith(".embed"):
        xcom[f"{{t.task_id}}[{{t.map_index}}]"] = t.xcom_pull(task_ids=t.task_id, map_indexes=t.map_index)
print(json.dumps({{"state": str(run.state), "tis": tis, "xcom": xcom}}, default=str))
"""


class LimitWatcher(threading.Thread):
    """Records the HostConfig of every step container created while it runs.

    The engine's event stream names each container as it is created; it is inspected at once,
    before it can have started, run and been removed (polling ``docker ps`` misses the short ones).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, dict] = {}
        self.missed: list[str] = []
        self.events = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container"]
            + ["--filter", "event=create", "--filter", f"label={STEP_LABEL}"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self) -> None:
        for line in self.events.stdout:
            cid = json.loads(line)["id"]
            r = subprocess.run(["docker", "inspect", cid], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                self.missed.append(cid[:12])
                continue
            (c,) = json.loads(r.stdout)
            self.seen[c["Id"][:12]] = {
                "step": c["Config"]["Labels"].get(STEP_LABEL),
                "profile": c["Config"]["Labels"].get(PROFILE_LABEL),
                "memory": c["HostConfig"]["Memory"],
                "nano_cpus": c["HostConfig"]["NanoCpus"],
                "network": c["HostConfig"]["NetworkMode"],
                "mounts": [(m["Source"], m["Destination"], m["RW"]) for m in c["Mounts"]],
                "env": c["Config"]["Env"],
            }

    def close(self) -> None:
        time.sleep(1)  # the last create events are in the stream
        self.events.terminate()
        self.join(timeout=30)
        self.events.wait(timeout=30)


def left_behind(lake_uri: str) -> list[str]:
    """Step containers of this test's lake that still exist (other stacks may run their own)."""
    ids = containers(STEP_LABEL)
    if not ids:
        return []
    r = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=False)
    found = json.loads(r.stdout or "[]")
    return [c["Id"][:12] for c in found if f"SCLAKE_LAKE_URI={lake_uri}" in (c["Config"]["Env"] or [])]


@pytest.fixture(scope="module")
def worker_image() -> str:
    require_docker()
    build_images()
    return deploy.WORKER_IMAGE


def dag_test(dag_id: str, env: dict[str, str]) -> tuple[dict, str]:
    r = run_py(DAG_TEST.format(dags=str(ROOT / "dags"), dag_id=dag_id), env, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout + r.stderr


def test_docker_mode_runs_every_step_in_the_worker_image(tmp_path: Path, settings_s3, tiny_model, worker_image):
    from pipelines.profiles import get_profile
    from pipelines.sample import write_sample

    lake = Lake(settings_s3)
    good = write_sample(tmp_path / "good.h5ad", cells=300, genes=3000, seed=11)
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not an HDF5 file\n" * 20)
    lake.put(good, "incoming/lab-a/good.h5ad")
    lake.put(bad, "incoming/lab-b/bad.h5ad")

    env = airflow_env(
        tmp_path,
        settings_s3,
        SCLAKE_SENSOR_TIMEOUT_S="3",
        SCLAKE_SENSOR_POKE_S="1",
        SCLAKE_MODELS=tiny_model,
        SCLAKE_EXECUTION_MODE="docker",
        SCLAKE_WORKER_IMAGE=worker_image,
        SCLAKE_MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
    )
    r = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]

    watcher = LimitWatcher()
    watcher.start()
    try:
        ingest, log = dag_test("sclake_ingest", env)
        Path("/tmp/docker-mode-ingest.log").write_text(log)
        # The bad upload's refusal fails its publish task (and so the run); the good one is published.
        assert ingest["tis"]["process_upload.publish[0]"] != ingest["tis"]["process_upload.publish[1]"], ingest
        assert all(s == "success" for k, s in ingest["tis"].items() if ".publish" not in k), (ingest, log[-6000:])
        embed, embed_log = dag_test("sclake_embed", env)
        assert embed["state"] == "success", embed
    finally:
        watcher.close()

    # The good upload is embedded, the bad one quarantined with its reason.
    (raw,) = lake.ls("raw")
    good_id = raw.split("/")[-1].removesuffix(".h5ad")
    quarantined = lake.ls("quarantine", recursive=True)
    assert any(p.endswith("reason.json") for p in quarantined) and any(p.endswith("bad.h5ad") for p in quarantined)
    assert lake.ls("incoming", recursive=True) == []
    prefix = PATHS.embeddings(tiny_model, good_id)
    assert lake.commit_info(prefix)["rows"] == 300

    # Each step's JSON result came back as XCom (the container's last JSON line).
    results = [json.loads(v) if isinstance(v, str) else v for v in ingest["xcom"].values()]
    assert sorted(m["outcome"] for m in results) == ["ingested", "quarantined"]
    (embedded,) = [json.loads(v) if isinstance(v, str) else v for v in embed["xcom"].values()]
    assert embedded["dataset_id"] == good_id and embedded["model"] == tiny_model
    # The containers' own log lines are in the task logs (the ingest step's summary line).
    assert "300 cells x 3000 genes" in log, log[-3000:]

    # Every step ran in a container with the profile's limits, on the host network,
    # the model cache read-only; none is left behind.
    profile = get_profile(tiny_model)
    ours = [c for c in watcher.seen.values() if f"SCLAKE_LAKE_URI={settings_s3.lake_uri}" in c["env"]]
    steps = sorted(c["step"] for c in ours)
    assert not watcher.missed, f"step containers gone before they could be inspected: {watcher.missed}"
    assert steps.count("ingest_upload") == 2 and steps.count("validate_upload") == 2 and "embed" in steps, steps
    for c in ours:
        assert c["memory"] == int(profile.container.memory), c
        assert c["nano_cpus"] == int(profile.container.cpus * 1e9), c
        assert c["network"] == "host", c
        assert (str(settings_s3.helical_prefix()), str(settings_s3.helical_prefix()), False) in c["mounts"], c
    assert left_behind(settings_s3.lake_uri) == []


def test_a_step_over_its_memory_cap_fails_and_says_which_setting_to_raise(
    tmp_path: Path, settings_s3, tiny_model, worker_image
):
    from pipelines.profiles import PROFILES_FILE
    from pipelines.sample import write_sample

    profiles = yaml.safe_load(PROFILES_FILE.read_text())
    profiles["profiles"][tiny_model]["container"]["memory"] = "48 MiB"
    site_profiles = tmp_path / "profiles.yaml"
    site_profiles.write_text(yaml.safe_dump(profiles))

    lake = Lake(settings_s3)
    lake.put(write_sample(tmp_path / "x.h5ad", cells=200, genes=2000, seed=3), "incoming/x.h5ad")
    env = airflow_env(
        tmp_path,
        settings_s3,
        SCLAKE_SENSOR_TIMEOUT_S="3",
        SCLAKE_SENSOR_POKE_S="1",
        SCLAKE_MODELS=tiny_model,
        SCLAKE_EXECUTION_MODE="docker",
        SCLAKE_WORKER_IMAGE=worker_image,
        SCLAKE_PROFILES=str(site_profiles),
    )
    r = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run, log = dag_test("sclake_ingest", env)
    assert run["state"] == "failed", run
    assert run["tis"]["process_upload.ingest[0]"].endswith("failed"), run
    assert "ran out of memory" in log and "container.memory" in log and str(site_profiles) in log, log[-3000:]
    # Failed without retry, the upload is still there to try again, and no container is left.
    assert lake.ls("incoming", recursive=True) != []
    assert left_behind(settings_s3.lake_uri) == []
