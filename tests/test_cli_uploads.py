"""What the URI argument of ``sclake ingest`` and ``sclake run`` names: a local file, a URI or a lake key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.errors import InputError
from pipelines.lake import Lake, LakeKeyError
from pipelines.settings import Settings


@pytest.fixture
def cli(settings_file: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``sclake ARGS`` in-process against ``settings_file``'s lake, run from ``tmp_path/cwd``."""
    from pipelines.cli import main
    from pipelines.settings import get_settings

    monkeypatch.setenv("SCLAKE_HOME", str(settings_file.home))
    monkeypatch.setenv("SCLAKE_LAKE_URI", settings_file.lake_uri)
    monkeypatch.setenv("SCLAKE_PUSHGATEWAY_URL", "")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        finally:
            get_settings.cache_clear()
            root = logging.getLogger()
            for handler in [h for h in root.handlers if getattr(h, "_sclake", False)]:
                root.removeHandler(handler)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("command", ["run", "ingest"])
@pytest.mark.parametrize("path", ["/nonexistent-dir/missing.h5ad", "./missing.h5ad", "../missing.h5ad"])
def test_missing_local_file_is_named_as_given(cli, settings_file: Settings, command: str, path: str) -> None:
    code, out, err = cli(command, path)
    assert code == 1 and out == ""
    assert err == f"sclake: error: local file {path!r} does not exist. check the path\n"
    assert Lake(settings_file).uri not in err


@pytest.mark.parametrize("command", ["run", "ingest"])
def test_missing_bare_name_is_neither_a_local_file_nor_a_lake_key(cli, settings_file: Settings, command: str) -> None:
    code, _, err = cli(command, "missing.h5ad")
    assert code == 1 and err.count("\n") == 1
    assert "'missing.h5ad' is neither a local file nor a key in the lake" in err


@pytest.mark.parametrize("command", ["run", "ingest"])
def test_lake_key_may_not_leave_the_lake(cli, tmp_path: Path, command: str) -> None:
    outside = tmp_path / "x.h5ad"  # what incoming/../../x.h5ad names in the lake at tmp_path/lake
    outside.write_bytes(b"not an h5ad")
    code, _, err = cli(command, "incoming/../../x.h5ad")
    assert code == 1 and err.count("\n") == 1
    assert "resolves to '../x.h5ad', which is not a key inside the lake" in err
    assert outside.read_bytes() == b"not an h5ad"


def test_upload_argument_rule(settings_file: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.commands.ingest import upload_argument

    lake = Lake(settings_file)
    lake.write_bytes("incoming/lab/a.h5ad", b"a")
    cwd = tmp_path / "cwd"
    (cwd / "incoming" / "lab").mkdir(parents=True)
    (cwd / "local.h5ad").write_bytes(b"l")
    monkeypatch.chdir(cwd)
    # a lake key, normalised
    assert upload_argument(settings_file, "incoming/lab/a.h5ad") == "incoming/lab/a.h5ad"
    with pytest.raises(InputError, match="local file '/incoming/lab/a.h5ad' does not exist"):
        upload_argument(settings_file, "/incoming/lab/a.h5ad")  # absolute: always a local path
    assert upload_argument(settings_file, "incoming//lab/./a.h5ad") == "incoming/lab/a.h5ad"
    # local files: by their form, or because they exist here
    assert upload_argument(settings_file, "local.h5ad") == str(cwd / "local.h5ad")
    assert upload_argument(settings_file, "./local.h5ad") == str(cwd / "local.h5ad")
    assert upload_argument(settings_file, str(cwd / "local.h5ad")) == str(cwd / "local.h5ad")
    # a local file shadows a lake key of the same name
    (cwd / "incoming" / "lab" / "a.h5ad").write_bytes(b"local a")
    assert upload_argument(settings_file, "incoming/lab/a.h5ad") == str(cwd / "incoming" / "lab" / "a.h5ad")
    # URIs: kept; an s3:// key is normalised and may not leave its bucket
    assert upload_argument(settings_file, "file:///x/y.h5ad") == "file:///x/y.h5ad"
    assert upload_argument(settings_file, "s3://b/incoming/a/../x.h5ad") == "s3://b/incoming/x.h5ad"
    with pytest.raises(LakeKeyError, match="inside bucket 'b'"):
        upload_argument(settings_file, "s3://b/incoming/../../other/x.h5ad")
    with pytest.raises(InputError, match="is a folder"):
        upload_argument(settings_file, "./incoming")
