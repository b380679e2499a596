"""Docker engine and project images for the tests marked ``docker``.

Where no engine answers, those tests are skipped on a developer's machine and fail in CI
(``CI`` set): CI installs and starts the engine (``.ci/run``), so a skip there would hide
a broken set-up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    return r.returncode == 0


def require_docker() -> None:
    """Skip (or fail in CI) when no Docker engine answers."""
    if docker_answers():
        return
    message = "no Docker engine answers (start one with tools/dockerd-up.sh)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def image_exists(tag: str) -> bool:
    r = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, timeout=60, check=False)
    return r.returncode == 0


def build_images(timeout: int = 3600) -> None:
    """``make images`` (offline; fast when every layer is cached).

    ``SCLAKE_TEST_REUSE_IMAGES=1`` uses the images already built instead (while working on
    the images themselves, say); CI always builds.
    """
    if os.environ.get("SCLAKE_TEST_REUSE_IMAGES") == "1" and not os.environ.get("CI"):
        return
    r = run_group(["make", "images"], timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def run_group(cmd: Sequence[str], *, timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a process group of its own; on a timeout or any interruption (the test's
    time limit included) the whole group is killed, so no build or ``docker-compose`` it
    started lives on behind the test."""
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def containers(label: str, *, all_states: bool = True) -> list[str]:
    """Ids of containers carrying ``label`` (``key`` or ``key=value``)."""
    cmd = ["docker", "ps", "-q", "--filter", f"label={label}"]
    if all_states:
        cmd.insert(2, "-a")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.split()
