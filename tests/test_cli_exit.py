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
