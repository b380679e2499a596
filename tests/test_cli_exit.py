"""The CLI process itself: it ends with the status its command gave, after S3 work too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.lake import Lake

pytestmark = pytest.mark.integration


def test_a_step_on_an_s3_lake_exits_with_its_status(settings_s3, tmp_path: Path) -> None:
    """A refused upload on S3: the step prints its manifest and exits 0 (it once crashed at shutdown)."""
    lake = Lake(settings_s3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_LAKE_URI=settings_s3.lake_uri,
        SCLAKE_S3_ENDPOINT_URL=settings_s3.s3_endpoint_url,
        SCLAKE_S3_ACCESS_KEY=settings_s3.s3_access_key,
        SCLAKE_S3_SECRET_KEY=settings_s3.s3_secret_key,
    )
    for n in range(3):
        bad = tmp_path / f"bad-{n}.h5ad"
        bad.write_bytes(b"not an HDF5 file\n" * (20 + n))
        lake.put(bad, f"incoming/{bad.name}")
        sclake = str(Path(sys.executable).with_name("sclake"))
        r = subprocess.run(
            [sclake, "step", "ingest_upload", "--set", f"key=incoming/{bad.name}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
        assert json.loads(r.stdout.strip().splitlines()[-1])["outcome"] == "quarantined"


@pytest.mark.slow
def test_an_s3_server_dying_mid_ingest_gives_one_line(tmp_path: Path) -> None:
    """The object store goes away while Dask tasks write parts: the user reads one line that
    names the endpoint and what to do (Dask's task dumps and tracebacks only with -v)."""
    import signal
    import socket
    import time

    from pipelines.sample import write_sample
    from tests.conftest import free_port, rclone_binary

    sample = write_sample(tmp_path / "big.h5ad", cells=20000, genes=4000, seed=9)
    (tmp_path / "s3" / "lake").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(
        [rclone_binary(), "serve", "s3", str(tmp_path / "s3"), "--addr", f"127.0.0.1:{port}"],
        env={**os.environ, "RCLONE_AUTH_KEY": '"sclaketestkey123,sclaketestsecret1234567890"'},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_LAKE_URI="s3://lake",
        SCLAKE_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        SCLAKE_S3_ACCESS_KEY="sclaketestkey123",
        SCLAKE_S3_SECRET_KEY="sclaketestsecret1234567890",
        SCLAKE_PART_CELLS="1000",
        SCLAKE_DASK_WORKERS="2",
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("sclake")), "ingest", str(sample)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stderr:  # the server dies once the first part is written
            lines.append(line)
            if " part 1/" in line or " part 2/" in line:
                os.killpg(server.pid, signal.SIGKILL)
                break
        lines += proc.stderr.readlines()
        proc.wait(timeout=300)
    finally:
        server.kill()
        proc.kill()
    assert proc.returncode == 1, "".join(lines)
    said = [line for line in lines if " INFO " not in line and line.strip()]
    assert len(said) == 1, "".join(said)
    assert said[0].startswith(f"sclake: error: cannot reach http://127.0.0.1:{port}"), said[0]
    assert "sclake stack up" in said[0]


LEAVE = """
import atexit, sys, threading, time
from pathlib import Path

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
sys.argv = ["sclake", *sys.argv[2:]]
from pipelines.cli import run
run()
"""


@pytest.mark.parametrize(("argv", "status"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_console_script_exits_as_the_interpreter_would(tmp_path: Path, argv: list[str], status: int) -> None:
    """The script leaves without the interpreter's module teardown (up to a second after a
    step), but with what an exit must do: the status, every byte printed through a pipe, other
    threads waited for, the atexit handlers run."""
    r = subprocess.run(
        [sys.executable, "-c", LEAVE, str(tmp_path), *argv],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == status, r.stderr[-2000:]
    if status == 0:  # the whole help, through the pipe, down to its last command and frame
        assert "Usage: sclake" in r.stdout and "│ compose " in r.stdout and r.stdout.rstrip().endswith("╯"), r.stdout
    else:
        assert "No such command 'no-such-command'" in r.stderr and "Commands: " in r.stderr, r.stderr
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
