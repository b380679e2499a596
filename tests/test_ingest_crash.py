"""``sclake ingest`` as a user runs it: worker processes, a SIGKILL mid-way, a rerun that finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pipelines.dataset import open_dataset
from pipelines.lake import PATHS, Lake
from pipelines.sample import write_sample
from pipelines.settings import Settings

SCLAKE = str(Path(sys.executable).with_name("sclake"))


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_HOME=str(settings.home),
        SCLAKE_LAKE_URI=settings.lake_uri,
        SCLAKE_PART_CELLS="64",
        SCLAKE_SHARD_CELLS="16",
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_DASK_WORKER_MEMORY="1GiB",
    )
    return env


def completed_parts(stage: Path) -> int:
    n = 0
    for meta in stage.glob("parts/*/zarr.json"):
        try:
            n += "sclake-part" in json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            continue
    return n


@pytest.mark.slow
def test_killed_ingest_leaves_nothing_visible_and_a_rerun_completes(settings_file: Settings, tmp_path: Path) -> None:
    lake = Lake(settings_file)
    path = write_sample(tmp_path / "kill.h5ad", cells=64 * 40, genes=1500, seed=21)
    lake.put(path, "incoming/kill.h5ad")
    dataset_id = lake.sha256("incoming/kill.h5ad")[:16]
    stage = Path(lake.path(PATHS.staging(PATHS.zarr(dataset_id))))
    env = cli_env(settings_file)

    log = (tmp_path / "first.log").open("wb")
    proc = subprocess.Popen(
        [SCLAKE, "ingest", "incoming/kill.h5ad"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while completed_parts(stage) < 3:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no part was converted in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Dask workers, as a crashed machine would
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    kept = completed_parts(stage)
    assert 3 <= kept < 40, "the conversion was not interrupted mid-way"

    # Nothing is visible: no dataset, no store; the upload is still waiting.
    assert not lake.is_published(PATHS.zarr(dataset_id))
    assert lake.ls("zarr") == []
    assert lake.exists("incoming/kill.h5ad")

    done = subprocess.run(
        [SCLAKE, "ingest", "incoming/kill.h5ad"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == dataset_id
    assert "resuming" in done.stderr and f"{kept} of 40 parts" in done.stderr

    ds = open_dataset(lake, dataset_id)
    src = ad.read_h5ad(path)
    back = ds.to_anndata()
    assert (back.X != src.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, src.obs)
    assert len(ds.parts) == 40
    assert not stage.exists()
    assert not lake.exists("incoming/kill.h5ad")


def test_cli_prints_one_line_error_for_an_unusable_file(settings_file: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"\x00" * 4096)
    out = subprocess.run(
        [SCLAKE, "ingest", str(bad)],
        env=cli_env(settings_file),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("sclake: error: not an HDF5/.h5ad file")


def test_a_matrix_declaring_a_huge_shape_is_refused_fast_and_small(settings_file: Settings, tmp_path: Path) -> None:
    """A CSR group whose attributes declare 10^9 x 10^6 over a few stored values: refused from
    its metadata, without allocating what the shape promises."""
    import h5py

    from pipelines.sample import write_sample

    path = write_sample(tmp_path / "huge.h5ad", cells=50, genes=200, seed=1)
    with h5py.File(path, "r+") as f:
        f["X"].attrs["shape"] = np.array([10**9, 10**6], dtype=np.int64)
    start = time.monotonic()
    # A fresh launcher reports the largest RSS among its own descendants only (the sclake
    # process and what it started), not of every process this test session ran before.
    launcher = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('peak', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(r.returncode)"
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher, SCLAKE, "ingest", str(path)],
        env=cli_env(settings_file),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - start
    peak = int(out.stdout.strip().splitlines()[-1].split()[-1])
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("sclake: error: ")
    assert took < 60, f"refused after {took:.0f}s"
    assert peak < 2 * 2**30, f"peak RSS {peak / 2**30:.1f} GiB"
