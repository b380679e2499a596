"""Quarantine: refused uploads kept byte-identical with a reason, listed, released, and taken again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import pytest
from badinput import case
from validate_support import cli_env, client_fixture, configured, model_prefix_fixture, run_cli  # noqa: F401

from pipelines import __version__
from pipelines.errors import InputError, LakeError
from pipelines.lake import PATHS, Lake, LakeKeyError
from pipelines.orchestration.steps import process_upload
from pipelines.quarantine import list_quarantine, quarantine, quarantine_dataset, read_reason, release
from pipelines.sample import write_sample
from pipelines.settings import Settings
from pipelines.validate import is_validated, read_summary


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(name: str, folder: Path) -> Path:
    path = folder / f"{name}.h5ad"
    case(name).build(path)
    return path


def assert_only_in_quarantine(lake: Lake, dataset_id: str, file: str, data: bytes) -> None:
    """The upload is in quarantine, byte-identical, and nowhere else in the lake."""
    assert lake.read_bytes(f"{PATHS.quarantine(dataset_id)}/{file}") == data
    assert not lake.exists(PATHS.raw(dataset_id))
    assert not lake.ls(PATHS.incoming, recursive=True)
    assert not lake.exists(PATHS.zarr(dataset_id)) and not lake.exists(PATHS.staging(PATHS.zarr(dataset_id)))


def test_failed_upload_is_quarantined_fixed_and_released(
    any_settings: Settings, model_prefix: Path, client, tmp_path: Path
) -> None:
    settings = configured(any_settings, model_prefix)
    lake = Lake(settings)
    path = build("duplicate_cell_ids", tmp_path)
    original = path.read_bytes()
    lake.put(path, "incoming/lab/dup.h5ad")

    result = process_upload(settings, "incoming/lab/dup.h5ad", client=client)
    assert (result["outcome"], result["stage"], result["code"]) == ("quarantined", "validate", "duplicate_cell_ids")
    dataset_id = result["dataset_id"]
    assert dataset_id == sha(original)[:16] and result["quarantine_path"] == f"quarantine/{dataset_id}/dup.h5ad"
    assert_only_in_quarantine(lake, dataset_id, "dup.h5ad", original)
    reason = read_reason(settings, dataset_id)
    assert reason == lake.read_json(f"quarantine/{dataset_id}/reason.json")
    assert {k: reason[k] for k in ("dataset_id", "source", "file", "sha256", "size", "stage", "code")} == {
        "dataset_id": dataset_id,
        "source": "incoming/lab/dup.h5ad",
        "file": "dup.h5ad",
        "sha256": sha(original),
        "size": len(original),
        "stage": "validate",
        "code": "duplicate_cell_ids",
    }
    assert reason["failed_checks"] == ["duplicate_cell_ids"] and reason["sclake_version"] == __version__
    assert "20 cells share their id" in reason["reason"] and "obs_names_make_unique" in reason["hint"]
    assert reason["encoding-type"] == "sclake.quarantine-reason"
    assert [(e.dataset_id, e.code, e.file, e.size) for e in list_quarantine(settings)] == [
        (dataset_id, "duplicate_cell_ids", "dup.h5ad", len(original))
    ]

    # The user fixes the file in place, then releases it: it flows again as a new dataset.
    adata = ad.read_h5ad(path)
    adata.obs_names_make_unique()
    fixed = tmp_path / "fixed.h5ad"
    adata.write_h5ad(fixed)
    lake.put(fixed, f"quarantine/{dataset_id}/dup.h5ad")
    assert release(settings, dataset_id) == "incoming/dup.h5ad"
    assert lake.read_bytes("incoming/dup.h5ad") == fixed.read_bytes()
    assert not lake.ls(PATHS.quarantine(dataset_id), recursive=True) and list_quarantine(settings) == []
    released = lake.read_json(f"{PATHS.reports(dataset_id)}/released.json")
    assert released["released_to"] == "incoming/dup.h5ad" and released["modified"] is True

    again = process_upload(settings, "incoming/dup.h5ad", client=client)
    assert again["outcome"] == "pass" and again["dataset_id"] == sha(fixed.read_bytes())[:16]
    assert lake.read_bytes(PATHS.raw(again["dataset_id"])) == fixed.read_bytes()
    assert not lake.ls(PATHS.incoming, recursive=True) and is_validated(lake, again["dataset_id"])


def test_refused_local_upload_is_copied_and_left_in_place(
    settings_file: Settings, model_prefix: Path, client, tmp_path: Path
) -> None:
    settings = configured(settings_file, model_prefix)
    path = build("not_hdf5", tmp_path)
    result = process_upload(settings, str(path), client=client)
    assert (result["outcome"], result["stage"], result["code"]) == ("quarantined", "ingest", "not_hdf5")
    assert path.is_file()  # the user's own file is never removed
    lake = Lake(settings)
    assert_only_in_quarantine(lake, result["dataset_id"], "not_hdf5.h5ad", path.read_bytes())
    assert read_reason(settings, result["dataset_id"])["source"] == str(path)


def test_quarantine_is_idempotent_and_release_as_is_repeats(
    settings_file: Settings, model_prefix: Path, client, tmp_path: Path
) -> None:
    settings = configured(settings_file, model_prefix)
    lake = Lake(settings)
    path = build("gene_symbols", tmp_path)
    data = path.read_bytes()
    lake.put(path, "incoming/symbols.h5ad")
    first = process_upload(settings, "incoming/symbols.h5ad", client=client)
    dataset_id = first["dataset_id"]
    assert first["code"] == "not_ensembl_ids"

    # A run interrupted after the copy (the original still in raw/) is finished by running it again.
    lake.put(path, PATHS.raw(dataset_id))
    failed = read_summary(lake, dataset_id)  # the validation report, as quarantine_dataset reads a result
    failed_result = SimpleNamespace(**{k: failed.get(k) for k in ("code", "reason", "hint", "failed_checks", "report")})
    entry = quarantine_dataset(settings, dataset_id, failed_result, upload="incoming/symbols.h5ad")
    assert entry.file == "symbols.h5ad"
    assert_only_in_quarantine(lake, dataset_id, "symbols.h5ad", data)

    # Released unchanged, it is refused again with the same reason, still in one place only.
    release(settings, dataset_id)
    assert read_json_or_none(lake, f"{PATHS.reports(dataset_id)}/released.json")["modified"] is False
    second = process_upload(settings, "incoming/symbols.h5ad", client=client)
    assert (second["dataset_id"], second["code"]) == (dataset_id, "not_ensembl_ids")
    assert_only_in_quarantine(lake, dataset_id, "symbols.h5ad", data)


def read_json_or_none(lake: Lake, rel: str):
    return lake.read_json(rel) if lake.exists(rel) else None


def test_other_files_keep_flowing(settings_file: Settings, model_prefix: Path, client, tmp_path: Path) -> None:
    """A refused upload and a vanished one leave the others untouched; each step manifest is JSON."""
    settings = configured(settings_file, model_prefix)
    lake = Lake(settings)
    lake.put(build("truncated", tmp_path), "incoming/a-truncated.h5ad")
    good = write_sample(tmp_path / "good.h5ad", cells=90, genes=300, seed=21)
    lake.put(good, "incoming/b-good.h5ad")
    refused = process_upload(settings, "incoming/a-truncated.h5ad", client=client)
    with pytest.raises(InputError, match="does not exist") as missing:
        process_upload(settings, "incoming/c-missing.h5ad", client=client)
    passed = process_upload(settings, "incoming/b-good.h5ad", client=client)
    assert (refused["outcome"], refused["code"], passed["outcome"]) == ("quarantined", "truncated", "pass")
    assert "truncated" in refused["reason"] and missing.value.code == "not_found"
    assert lake.read_bytes(PATHS.raw(passed["dataset_id"])) == good.read_bytes()
    assert not lake.ls(PATHS.incoming, recursive=True)
    assert json.loads(json.dumps(passed)) == passed and passed["n_kept"] == 90


def test_cli_quarantine_list_show_release(
    settings_file: Settings, model_prefix: Path, client, tmp_path: Path, monkeypatch, capsys
) -> None:
    settings = configured(settings_file, model_prefix)
    lake = Lake(settings)
    lake.put(build("zero_genes", tmp_path), "incoming/zero.h5ad")
    result = process_upload(settings, "incoming/zero.h5ad", client=client)
    assert result["code"] == "no_genes"
    cli_env(monkeypatch, settings)

    code, out, _ = run_cli(["quarantine", "list"], capsys)
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["dataset_id", "code", "file", "reason"]
    assert row.startswith(f"{result['dataset_id']}  no_genes") and "zero.h5ad" in row
    code, out, _ = run_cli(["quarantine", "list", "--json"], capsys)
    assert json.loads(out)[0]["path"] == f"quarantine/{result['dataset_id']}/zero.h5ad"
    code, out, _ = run_cli(["quarantine", "show", result["dataset_id"]], capsys)
    assert code == 0 and json.loads(out)["reason"] == "the file holds no genes (X has 0 columns)"
    code, out, err = run_cli(["quarantine", "release", result["dataset_id"], "--to", "raw/x.h5ad"], capsys)
    assert code == 1 and "not a key under incoming/" in err
    code, out, _ = run_cli(["quarantine", "release", result["dataset_id"], "--to", "incoming/retry/zero.h5ad"], capsys)
    assert code == 0 and "incoming/retry/zero.h5ad" in out
    assert lake.exists("incoming/retry/zero.h5ad")
    code, out, _ = run_cli(["quarantine", "list"], capsys)
    assert out.strip() == "quarantine is empty"
    code, out, err = run_cli(["quarantine", "release", result["dataset_id"]], capsys)
    assert code == 1 and "is not in quarantine" in err


def test_release_of_unknown_dataset_fails(settings_file: Settings) -> None:
    with pytest.raises(LakeError, match="is not in quarantine"):
        release(settings_file, "0123456789abcdef")


# --- quarantine entries made directly (no ingest): listing and confined release targets -------------


def quarantined(settings: Settings, folder: Path, name: str, data: bytes) -> str:
    """Quarantine a local file holding ``data`` as refused by ingest; returns its dataset id."""
    path = folder / name
    path.write_bytes(data)
    dataset_id = sha(data)[:16]
    reason = {"stage": "ingest", "code": "not_hdf5", "reason": "not an HDF5/.h5ad file", "hint": "upload an .h5ad"}
    quarantine(settings, dataset_id, reason, local_file=path, file_name=name)
    return dataset_id


def test_cli_quarantine_list_has_a_header(settings_file: Settings, tmp_path: Path, monkeypatch, capsys) -> None:
    cli_env(monkeypatch, settings_file)
    code, out, _ = run_cli(["quarantine", "list"], capsys)
    assert code == 0 and out == "quarantine is empty\n"
    first = quarantined(settings_file, tmp_path, "a.h5ad", b"first\n")
    second = quarantined(settings_file, tmp_path, "a-much-longer-name.h5ad", b"second\n")
    code, out, _ = run_cli(["quarantine", "list"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split() == ["dataset_id", "code", "file", "reason"]
    assert {line.split()[0] for line in lines[1:]} == {first, second}
    # columns line up under the header
    for column in ("code", "file", "reason"):
        at = lines[0].index(column)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines[1:])


@pytest.mark.parametrize(
    "target",
    [
        "incoming/../../escaped.h5ad",
        "incoming/../raw/{id}.h5ad",
        "incoming/../quarantine/{id}/x.h5ad",
        "raw/{id}.h5ad",
        "incoming",
        "incoming/..",
        "../incoming/x.h5ad",
        "s3://lake/incoming/x.h5ad",
        "",
    ],
)
def test_release_target_is_confined_to_incoming(
    settings_file: Settings, tmp_path: Path, monkeypatch, capsys, target: str
) -> None:
    lake = Lake(settings_file)
    data = b"refused bytes\n"
    dataset_id = quarantined(settings_file, tmp_path, "bad.h5ad", data)
    target = target.format(id=dataset_id)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(LakeKeyError, match="incoming/"):
        release(settings_file, dataset_id, to=target)
    cli_env(monkeypatch, settings_file)
    code, out, err = run_cli(["quarantine", "release", dataset_id, "--to", target], capsys)
    assert code == 1 and out == ""
    assert err.startswith("sclake: error: ") and err.count("\n") == 1 and "incoming/" in err
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written anywhere
    assert lake.read_bytes(f"{PATHS.quarantine(dataset_id)}/bad.h5ad") == data
    assert not lake.exists(PATHS.raw(dataset_id))


def test_release_target_is_normalised(settings_file: Settings, tmp_path: Path) -> None:
    lake = Lake(settings_file)
    first = quarantined(settings_file, tmp_path, "one.h5ad", b"one\n")
    assert release(settings_file, first, to="/incoming//lab/./tmp/../one.h5ad") == "incoming/lab/one.h5ad"
    assert lake.read_bytes("incoming/lab/one.h5ad") == b"one\n"
    second = quarantined(settings_file, tmp_path, "two.h5ad", b"two\n")
    assert release(settings_file, second) == "incoming/two.h5ad"


def test_quarantine_removes_nothing_outside_the_lake(settings_file: Settings, tmp_path: Path) -> None:
    lake = Lake(settings_file)
    lake.write_bytes("incoming/another.h5ad", b"another")  # incoming/ exists, so incoming/../.. resolves
    data = b"bytes outside the lake\n"
    victim = tmp_path / "victim.h5ad"  # what incoming/../../victim.h5ad names in the lake at tmp_path/lake
    victim.write_bytes(data)
    other = tmp_path / "other.h5ad"
    other.write_bytes(data)
    dataset_id = sha(data)[:16]
    reason = {"stage": "ingest", "code": "not_hdf5", "reason": "not an HDF5/.h5ad file", "hint": "upload an .h5ad"}
    entry = quarantine(
        settings_file, dataset_id, reason, "incoming/../../victim.h5ad", remove=("incoming/../../other.h5ad",)
    )
    assert entry.file == "victim.h5ad"
    assert lake.read_bytes(f"{PATHS.quarantine(dataset_id)}/victim.h5ad") == data
    assert victim.read_bytes() == data and other.read_bytes() == data
