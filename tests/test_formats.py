"""Formats declared once (pipelines/formats.py): writers use the table, readers refuse what they cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import formats
from pipelines.formats import FORMATS, FormatError, check, encoding
from pipelines.lake import PATHS, Lake
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_one_naming_convention_and_every_format_read_in_the_version_written() -> None:
    for name, f in FORMATS.items():
        assert f.encoding_type == f"sclake.{name}" and f.version in f.reads
        assert check(name, encoding(name), "x") == f.version
        assert check(name, formats.parquet_encoding(name), "x") == f.version  # bytes keys (Parquet)


def test_names_written_by_earlier_versions_are_read() -> None:
    assert check("dataset", {"encoding-type": "sclake-dataset", "encoding-version": "0.1.0"}, "x") == "0.1.0"
    assert check("validation", {"encoding-type": "sclake-validation", "encoding-version": "0.1.0"}, "x") == "0.1.0"


def test_an_unknown_version_or_format_is_refused_with_what_was_found_and_what_is_read() -> None:
    with pytest.raises(FormatError, match=r"'lake/x' is sclake.tokens version '7'; this sclake reads version\(s\) 1"):
        check("tokens", {"encoding-type": "sclake.tokens", "encoding-version": "7"}, "'lake/x'")
    with pytest.raises(FormatError, match=r"encoding-type 'sclake.tokens'; expected 'sclake.embeddings'"):
        check("embeddings", encoding("tokens"), "y")
    with pytest.raises(FormatError, match="encoding-type None"):
        check("dataset", {}, "z")
    with pytest.raises(ValueError, match="version '2'"):
        manifest = {"encoding-type": "sclake.model-manifest", "encoding-version": "2"}
        check("model-manifest", manifest, "m", error=ValueError)


@pytest.mark.parametrize("name", ["tokens", "embeddings", "annotations"])
def test_parquet_schemas_declare_the_table_entries(name: str) -> None:
    schema = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    assert {k: schema[k] for k in ("encoding-type", "encoding-version")} == encoding(name)


def test_a_dataset_of_another_version_is_refused_and_an_earlier_name_opens(settings_file: Settings, tmp_path) -> None:
    import zarr
    from distributed import Client

    from pipelines.dataset import open_dataset
    from pipelines.ingest import ingest
    from pipelines.sample import write_sample

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        dataset_id = ingest(settings_file, str(write_sample(tmp_path / "a.h5ad", cells=40, genes=120)), client=client)
        dataset_id = dataset_id.dataset_id
    lake = Lake(settings_file)
    root = zarr.open_group(lake.path(PATHS.zarr(dataset_id)), mode="r+", zarr_format=3)
    assert root.attrs["encoding-type"] == "sclake.dataset"
    root.attrs["encoding-type"] = "sclake-dataset"  # as sclake wrote it before the formats table
    assert open_dataset(lake, dataset_id).n_obs == 40
    root.attrs["encoding-version"] = "0.9.0"
    with pytest.raises(FormatError, match=r"version '0.9.0'; this sclake reads version\(s\) 0.1.0"):
        open_dataset(lake, dataset_id)
