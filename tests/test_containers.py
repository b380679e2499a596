"""The step containers' layout beside the embedded stack, and how a step's result is read back."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines import deploy
from pipelines.orchestration.containers import _HardCpuLimit, _result_line


def test_embedded_layout_binds_models_read_only_and_a_file_lake_read_write(settings_file, tmp_path: Path) -> None:
    settings = settings_file.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", "s3_secret_key": "sk"}
    )
    kwargs = deploy.docker_operator_kwargs(settings, gpus=0)
    assert kwargs["network_mode"] == "host" and kwargs["auto_remove"] == "force"
    assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}"
    mounts = {(m["Source"], m["Target"], m["ReadOnly"]) for m in kwargs["mounts"]}
    models = str(settings.helical_prefix())
    assert (models, models, True) in mounts
    lake = str(tmp_path / "lake")
    assert (lake, lake, False) in mounts
    assert (str(tmp_path / "mlflow"), str(tmp_path / "mlflow"), False) in mounts
    env = kwargs["environment"]
    assert env["SCLAKE_MODELS_DIR"] == models and env["CACHE_DIR_HELICAL_PREFIX"] == models
    assert env["HF_HUB_OFFLINE"] == "1" and "SCLAKE_S3_SECRET_KEY" not in env
    assert env["SCLAKE_CPU_ATTENTION"] == settings.cpu_attention == "auto"  # the engine computes as here
    assert kwargs["private_environment"] == {"SCLAKE_S3_SECRET_KEY": "sk"}
    # The compose layout is chosen by settings, not by where the code runs.
    compose = deploy.docker_operator_kwargs(settings.model_copy(update={"docker_stack": "compose"}))
    assert compose["network_mode"] == deploy.NETWORK and compose["docker_url"] == deploy.DOCKER_URL
    assert "user" not in compose


def test_nested_writable_folders_are_mounted_once(settings_file, tmp_path: Path) -> None:
    settings = settings_file.model_copy(
        update={"lake_uri": f"file://{tmp_path}", "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'm' / 'x.db'}"}
    )
    binds = [m["Source"] for m in deploy.docker_operator_kwargs(settings)["mounts"] if not m["ReadOnly"]]
    assert binds == [str(tmp_path)]


def test_the_result_is_the_last_json_line_whatever_follows_it() -> None:
    lines = ["INFO starting", '{"dataset_id": "abc", "outcome": "ingested"}', "INFO closing the cluster", "{not json}"]
    assert _result_line(lines) == '{"dataset_id": "abc", "outcome": "ingested"}'
    assert _result_line(["no result"]) is None


def test_cpus_become_a_hard_limit() -> None:
    from docker import APIClient

    client = _HardCpuLimit(APIClient(base_url="unix://var/run/docker.sock", version="1.41"), 1.5)
    config = client.create_host_config(mem_limit=2**30, cpu_shares=1536)
    assert config["NanoCpus"] == 1_500_000_000 and config["Memory"] == 2**30
