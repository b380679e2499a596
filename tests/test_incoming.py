"""Files under incoming/ that are not uploads: reported once, listed by `sclake uploads`, never ingested."""

from __future__ import annotations

import json
import logging

from pipelines.cli import main
from pipelines.lake import Lake
from pipelines.orchestration.uploads import SKIPPED_REPORT, list_uploads, skip_reason


def test_the_rule() -> None:
    assert skip_reason("incoming/lab/x.h5ad") is None and skip_reason("incoming/X.H5AD") is None
    assert "hidden" in skip_reason("incoming/.x.h5ad")
    assert "hidden" in skip_reason("incoming/.partial/x.h5ad")
    assert "not an .h5ad" in skip_reason("incoming/notes.txt")


def test_other_files_are_reported_once_and_listed(any_settings, tmp_path, caplog, capsys, monkeypatch) -> None:
    lake = Lake(any_settings)
    for key, data in {
        "incoming/lab/good.h5ad": b"x",
        "incoming/lab/README.txt": b"notes",
        "incoming/.hidden.h5ad": b"y",
    }.items():
        local = tmp_path / key.replace("/", "_")
        local.write_bytes(data)
        lake.put(local, key)

    with caplog.at_level(logging.WARNING):
        assert list_uploads(any_settings) == ["incoming/lab/good.h5ad"]
        assert list_uploads(any_settings) == ["incoming/lab/good.h5ad"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ingesting")]
    assert len(said) == 2, said  # once each, not once per scan
    assert any("README.txt" in s and "only *.h5ad" in s for s in said)
    assert any(".hidden.h5ad" in s and "hidden" in s for s in said)
    assert set(lake.read_json(SKIPPED_REPORT)) == {"incoming/lab/README.txt", "incoming/.hidden.h5ad"}

    for k, v in {
        "SCLAKE_LAKE_URI": any_settings.lake_uri,
        "SCLAKE_S3_ENDPOINT_URL": any_settings.s3_endpoint_url or "",
        "SCLAKE_S3_ACCESS_KEY": any_settings.s3_access_key or "",
        "SCLAKE_S3_SECRET_KEY": any_settings.s3_secret_key or "",
        "SCLAKE_HOME": str(any_settings.home),
    }.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    assert main(["uploads", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["incoming/lab/good.h5ad"]["state"] == "waiting"
    assert rows["incoming/lab/README.txt"]["state"] == "skipped"
    assert rows["incoming/.hidden.h5ad"]["state"] == "skipped"
    assert main(["uploads"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["key", "state", "why"]
