"""Validation: suites from schemas/, per-part aggregates, outcomes, reports and Data Docs, validated cells,
embedding outputs, and ``sclake validate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from badinput import case
from validate_support import MODEL, cli_env, client_fixture, configured, model_prefix_fixture, run_cli  # noqa: F401

from pipelines.errors import ConfigError, LakeError, ModelFilesError
from pipelines.ingest import ingest
from pipelines.lake import PATHS, Lake
from pipelines.quarantine import is_quarantined
from pipelines.sample import write_sample
from pipelines.settings import Settings
from pipelines.validate import (
    EmbeddingCheckError,
    is_validated,
    read_summary,
    validate_dataset,
    validate_embeddings,
    validated_cell_ids,
    validated_cells,
)
from pipelines.validate.aggregates import summarise_block
from pipelines.validate.cell_checks import PER_CELL_SUITES
from pipelines.validate.suites import DATASET_SUITES, EMBEDDING_SUITE, SCHEMAS_ENV, gx_suite, load_suite


@pytest.fixture
def settings(settings_file: Settings, model_prefix: Path) -> Settings:
    return configured(settings_file, model_prefix)


def ingested(settings: Settings, path: Path, client) -> str:
    return ingest(settings, str(path), client=client).dataset_id


# -- suites as data ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*DATASET_SUITES, EMBEDDING_SUITE])
def test_suites_load_from_schemas(name: str) -> None:
    data = json.loads((Path(__file__).parents[1] / "schemas" / "expectations" / f"{name}.json").read_text())
    suite = gx_suite(name)
    assert suite.name == name == data["name"]
    assert len(suite.expectations) == len(data["expectations"]) > 0
    meta = data["meta"]
    known = set(meta.get("thresholds", {})) | set(meta.get("parameters", {}))
    for exp in data["expectations"]:
        assert exp["meta"]["code"] and exp["meta"]["check"]
        for value in exp["kwargs"].values():
            if isinstance(value, dict) and "$PARAMETER" in value:
                assert value["$PARAMETER"] in known, f"{name}: {value} is not a declared threshold/parameter"


def test_broken_suite_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(Path(__file__).parents[1] / "schemas", schemas)
    monkeypatch.setenv(SCHEMAS_ENV, str(schemas))
    path = schemas / "expectations" / "sclake.obs.json"
    suite = json.loads(path.read_text())
    good = json.loads(json.dumps(suite))
    suite["expectations"][1]["type"] = "expect_column_values_to_be_nice"  # GX alone would drop it with a log line
    path.write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match="accepted 3 of 4"):
        gx_suite("sclake.obs")
    suite = json.loads(json.dumps(good))
    suite["expectations"][1]["kwargs"] = {}  # not_be_null without its column
    path.write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match=r"sclake\.obs\.json' is invalid"):
        gx_suite("sclake.obs")
    del suite["expectations"][0]["meta"]["code"]
    path.write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match="has no meta.code"):
        load_suite("sclake.obs")


# -- aggregates ----------------------------------------------------------------------------------


def test_part_summary_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.8, size=(30, 50)).astype(np.float32)
    dense[2, 3], dense[4, 5], dense[6, 7], dense[8, 9] = np.nan, np.inf, -2.0, 1.5
    for block in (dense, sp.csr_matrix(dense)):
        s = summarise_block(block, part=3)
        finite = np.where(np.isfinite(dense), dense, 0)
        np.testing.assert_allclose(s.total_counts, finite.sum(axis=1))
        np.testing.assert_array_equal(s.n_genes, (finite > 0).sum(axis=1))
        np.testing.assert_array_equal(s.gene_cells, (finite > 0).sum(axis=0))
        np.testing.assert_allclose(s.gene_counts, finite.sum(axis=0))
        v = s.values
        assert (v["part"], v["n_cells"], v["n_nan"], v["n_inf"], v["n_negative"], v["n_nonint"]) == (3, 30, 1, 1, 1, 1)
        assert (v["min"], v["max"]) == (-2.0, float(np.nanmax(np.where(np.isinf(dense), np.nan, dense))))
        assert s.nonint_examples == [1.5] and s.negative_examples == [-2.0]


# -- outcomes, reports, validated cells -----------------------------------------------------------


def _whole_and_by_part(tmp_path: Path, ids: list, n_genes: np.ndarray, bounds: list[int]) -> tuple[dict, dict, dict]:
    """The per-cell suites' results over the whole table (one GX run) and merged over parts (``bounds``)."""
    from pipelines.validate.aggregates import PartSummary
    from pipelines.validate.cell_checks import CellChecks, part_tables
    from pipelines.validate.gx_runner import SuiteRunner
    from pipelines.validate.suites import thresholds

    totals = n_genes.astype(np.float64) * 2
    runner = SuiteRunner(tmp_path / "docs")
    whole = part_tables(0, pa.array(ids, pa.string()), PartSummary(0, totals, n_genes, np.zeros(1), np.zeros(1)))
    expected = {name: runner.run(name, whole[name], thresholds(name)) for name in PER_CELL_SUITES}
    checks = CellChecks(runner, "d")
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    for part, (a, b) in reversed(list(enumerate(pieces))):  # in any order, as Dask delivers them
        summary = PartSummary(part, totals[a:b], n_genes[a:b], np.zeros(1), np.zeros(1))
        checks.add(part, pa.array(ids[a:b], pa.string()), summary)
    merged, facts = checks.finish(lambda part: pa.array(ids[pieces[part][0] : pieces[part][1]], pa.string()))
    return expected, merged, facts


def test_per_cell_suites_by_part_equal_the_whole_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(300)]
    ids[250] = ids[3]  # the same id in the first and last parts
    ids[251] = ids[4]
    ids[120], ids[121] = None, ""  # missing ids
    n_genes = rng.integers(30, 90, 300)
    n_genes[:100] = 5  # the whole first part is below min_genes: that part alone fails `mostly`
    expected, merged, facts = _whole_and_by_part(tmp_path, ids, n_genes, [0, 100, 200, 300])
    for name in PER_CELL_SUITES:
        got = {(c.expectation, c.code): c for c in merged[name]}
        for want in expected[name]:
            c = got[(want.expectation, want.code)]
            assert c.success == want.success, (name, want.code)
            for key in ("element_count", "unexpected_count", "missing_count", "observed_value"):
                assert c.observed.get(key) == want.observed.get(key), (name, want.code, key)
            if "unexpected_percent" in want.observed:
                assert c.observed["unexpected_percent"] == pytest.approx(want.observed["unexpected_percent"])
    codes = {c.code: c for c in merged["sclake.obs"] + merged["sclake.cells"]}
    assert not codes["duplicate_cell_ids"].success and codes["duplicate_cell_ids"].observed["unexpected_count"] == 4
    assert codes["mostly_empty_cells"].success  # 2/3 of the cells are kept: the dataset passes `mostly`
    assert not codes["low_gene_cells_dropped"].success
    assert facts == {"n_missing_ids": 2, "n_duplicate_ids": 4, "duplicate_examples": ["c3", "c4"]}
    assert merged["sclake.obs"][0].observed["observed_value"] == 300


def test_per_cell_suites_without_parts(tmp_path: Path) -> None:
    from pipelines.validate.cell_checks import CellChecks
    from pipelines.validate.gx_runner import SuiteRunner

    checks = CellChecks(SuiteRunner(tmp_path / "docs"), "d")
    merged, facts = checks.finish(lambda part: pa.array([], pa.string()))
    rows = [c for c in merged["sclake.obs"] if c.expectation == "expect_table_row_count_to_be_between"]
    assert not rows[0].success and rows[0].code == "no_cells"
    assert facts["n_missing_ids"] == 0 and facts["n_duplicate_ids"] == 0


def test_valid_dataset_passes_and_publishes_reports(settings: Settings, client, tmp_path: Path) -> None:
    dataset_id = ingested(settings, write_sample(tmp_path / "ok.h5ad", cells=150, genes=500, seed=1), client)
    result = validate_dataset(settings, dataset_id, model=MODEL, client=client)
    assert result.outcome == "pass" and result.ok and not result.warnings and result.code is None
    assert result.counts["n_cells"] == result.counts["n_kept"] == 150
    assert result.counts["n_genes"] == 500 and result.counts["vocabulary_share"] > 0.8
    assert {c.suite for c in result.checks} == set(DATASET_SUITES) and all(c.success for c in result.checks)

    lake = Lake(settings)
    folder = PATHS.validation(dataset_id)
    assert lake.is_published(folder)
    summary = read_summary(lake, dataset_id)
    assert summary["outcome"] == "pass" and summary["encoding-type"] == "sclake.validation"
    assert summary["thresholds"]["min_genes"] == 20
    gx_results = lake.read_json(f"{folder}/gx_results.json")
    assert set(gx_results) == set(DATASET_SUITES) and all(r["success"] for r in gx_results.values())
    index = lake.read_bytes(result.data_docs).decode()
    assert "<html" in index.lower()
    pages = lake.ls(f"{folder}/data_docs", recursive=True, suffix=".html")
    for name in DATASET_SUITES:  # one page per suite and one per validation result: per part for the per-cell suites
        assert any(p.endswith(f"expectations/{name.replace('.', '/')}.html") for p in pages), name
        runs = 3 if name in PER_CELL_SUITES else 1
        assert sum(f"/validations/{name.replace('.', '/')}/" in p for p in pages) == runs, name
    for name in PER_CELL_SUITES:  # merged over the parts, with each batch's own result
        merged = gx_results[name]
        assert [b["part"] for b in merged["batches"]] == [0, 1, 2] and all(b["success"] for b in merged["batches"])
        assert merged["statistics"]["batches"] == 3
        rows = [r for r in merged["results"] if r["expectation"] == "expect_table_row_count_to_be_between"]
        assert rows[0]["observed"]["observed_value"] == 150

    kept = validated_cells(lake, dataset_id)
    assert sorted(kept) == [0, 1, 2]
    for part, n in zip(range(3), (50, 50, 50), strict=True):
        np.testing.assert_array_equal(kept[part], np.arange(n))
    assert list(validated_cell_ids(lake, dataset_id)[:2]) == ["cell-000001", "cell-000002"]
    assert is_validated(lake, dataset_id)

    again = validate_dataset(settings, dataset_id, model=MODEL)  # threaded scheduler; replaces the report
    assert again.outcome == "pass" and lake.is_published(folder)
    assert len(lake.ls(f"{folder}/data_docs", recursive=True, suffix=".html")) == len(pages)


def test_empty_and_poor_cells_are_dropped_with_a_warning(settings: Settings, client, tmp_path: Path) -> None:
    import anndata as ad

    path = write_sample(tmp_path / "base.h5ad", cells=120, genes=400, seed=2)
    a = ad.read_h5ad(path)
    x = a.X.tolil()
    x[3, :] = 0  # empty
    x[70, :] = 0
    row = x[90, :].toarray().ravel()
    keep = np.flatnonzero(row)[:5]
    x[90, :] = 0
    x[90, keep] = row[keep]  # five genes detected: below min_genes (20)
    a.X = sp.csr_matrix(x)
    a.X.eliminate_zeros()
    a.write_h5ad(tmp_path / "some_empty.h5ad")

    dataset_id = ingested(settings, tmp_path / "some_empty.h5ad", client)
    result = validate_dataset(settings, dataset_id, model=MODEL, client=client)
    assert result.outcome == "pass_with_warnings" and result.ok
    assert result.counts["n_dropped"] == 3 and result.counts["n_empty"] == 2 and result.counts["n_kept"] == 117
    assert result.warnings == [
        "3 of 120 cells dropped (2 with no counts and 1 with fewer than 20 genes detected); "
        "117 cells go on to embedding"
    ]
    warned = {c.code for c in result.checks if not c.success}
    assert warned == {"empty_cells_dropped", "low_gene_cells_dropped"}
    kept = validated_cells(Lake(settings), dataset_id)
    # two parts of 60 cells: rows 3, 70 and 90 are 3 in part 0, 10 and 30 in part 1
    assert 3 not in kept[0] and 10 not in kept[1] and 30 not in kept[1] and len(kept[0]) == 59
    assert sum(len(v) for v in kept.values()) == 117
    assert read_summary(Lake(settings), dataset_id)["warnings"] == result.warnings


def test_failing_dataset_has_a_reason_and_no_validated_cells(settings: Settings, client, tmp_path: Path) -> None:
    path = tmp_path / "dup.h5ad"
    case("duplicate_cell_ids").build(path)
    dataset_id = ingested(settings, path, client)
    result = validate_dataset(settings, dataset_id, model=MODEL, client=client)
    assert result.outcome == "fail" and not result.ok
    assert result.code == "duplicate_cell_ids" and result.failed_checks == ["duplicate_cell_ids"]
    assert "20 cells share their id" in result.reason and "obs_names_make_unique" in result.hint
    lake = Lake(settings)
    assert read_summary(lake, dataset_id)["code"] == "duplicate_cell_ids"
    assert not is_validated(lake, dataset_id)
    assert not lake.exists(PATHS.validated_cells(dataset_id))
    with pytest.raises(LakeError, match="failed validation"):
        validated_cells(lake, dataset_id)
    assert not is_quarantined(lake, dataset_id)  # validate_dataset reports; quarantining is the caller's


def test_vocabulary_needs_the_model_dictionary(settings: Settings, client, tmp_path: Path) -> None:
    dataset_id = ingested(settings, write_sample(tmp_path / "ok.h5ad", cells=70, genes=300, seed=3), client)
    with pytest.raises(ModelFilesError, match="sclake models synthesize gf-12L-38M-i4096"):
        validate_dataset(settings, dataset_id, model="gf-12L-38M-i4096")
    with pytest.raises(LakeError, match="not been validated"):
        validated_cells(Lake(settings), dataset_id)


# -- embedding outputs ---------------------------------------------------------------------------


def write_embeddings(lake: Lake, dataset_id: str, rows: dict[int, tuple[list[str], np.ndarray]]) -> None:
    """Embedding Parquet parts as the contract defines them (cell_id, embedding: fixed-size float32 list)."""
    final = PATHS.embeddings(MODEL, dataset_id)
    if lake.is_published(final):
        lake.unpublish(final)
    with lake.publishing(final, info={"rows": sum(len(c) for c, _ in rows.values())}) as stage:
        for part, (ids, emb) in rows.items():
            width = emb.shape[1]
            values = pa.array(emb.astype(np.float32).ravel(), pa.float32())
            table = pa.table(
                {"cell_id": pa.array(ids, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(values, width)}
            )
            with lake.open(f"{stage}/part-{part:05d}.parquet", "wb") as f:
                pq.write_table(table, f)


def test_embedding_outputs_are_validated(settings: Settings, client, tmp_path: Path) -> None:
    dataset_id = ingested(settings, write_sample(tmp_path / "ok.h5ad", cells=100, genes=300, seed=4), client)
    assert validate_dataset(settings, dataset_id, model=MODEL).ok
    lake = Lake(settings)
    ids = list(validated_cell_ids(lake, dataset_id))
    width = 32  # the tiny model's hidden size
    rng = np.random.default_rng(0)
    good = {0: (ids[:64], rng.normal(size=(64, width))), 1: (ids[64:], rng.normal(size=(36, width)))}
    write_embeddings(lake, dataset_id, good)
    result = validate_embeddings(settings, dataset_id, MODEL)
    assert result.outcome == "pass" and result.counts == {"rows": 100, "validated_cells": 100, "width": 32, "parts": 2}
    assert read_summary(lake, dataset_id, MODEL)["outcome"] == "pass"
    assert lake.exists(f"{PATHS.validation(dataset_id, MODEL)}/data_docs/index.html")

    bad_values = rng.normal(size=(36, width))
    bad_values[5, 7] = np.nan
    bad = {0: (ids[:64], rng.normal(size=(64, width))), 1: ([ids[0], *ids[65:]], bad_values)}  # a duplicate, a NaN
    write_embeddings(lake, dataset_id, bad)
    with pytest.raises(EmbeddingCheckError) as err:
        validate_embeddings(settings, dataset_id, MODEL)
    assert err.value.result.failed_checks == ["embedding_duplicates", "embedding_non_finite"]
    assert read_summary(lake, dataset_id, MODEL)["outcome"] == "fail"

    write_embeddings(lake, dataset_id, {0: (ids[:50], rng.normal(size=(50, 16)))})  # missing rows, wrong width
    result = validate_embeddings(settings, dataset_id, MODEL, raise_on_fail=False)
    assert result.failed_checks == ["embedding_row_count", "embedding_width"]


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_validate(settings: Settings, client, tmp_path: Path, monkeypatch, capsys) -> None:
    good = ingested(settings, write_sample(tmp_path / "ok.h5ad", cells=80, genes=300, seed=5), client)
    bad_path = tmp_path / "symbols.h5ad"
    case("gene_symbols").build(bad_path)
    bad = ingested(settings, bad_path, client)
    cli_env(monkeypatch, settings)

    code, out, err = run_cli(["validate", good, "--model", MODEL], capsys)
    assert code == 0, err
    assert f"{good}: pass, 80 cells kept" in out

    code, out, err = run_cli(["validate", bad, "--json"], capsys)
    assert code == 1
    assert json.loads(out[: out.rindex("}") + 1])["code"] == "not_ensembl_ids"
    lines = [line for line in err.splitlines() if line.startswith("sclake: error:")]
    assert len(lines) == 1 and err.strip().endswith(lines[0])  # one line, the last
    assert lines[0].startswith(f"sclake: error: {bad} failed validation [not_ensembl_ids]: only 0% of the 400 gene ids")
    assert "Put Ensembl gene ids" in lines[0] and f"quarantine/{bad}/" in lines[0]
    lake = Lake(settings)
    assert is_quarantined(lake, bad) and not lake.exists(PATHS.raw(bad)) and not lake.is_published(PATHS.zarr(bad))

    code, out, err = run_cli(["validate", bad], capsys)  # a quarantined dataset says so
    assert code == 1 and "is in quarantine" in err


@pytest.mark.slow
def test_embedding_engine_embeds_exactly_the_validated_cells(settings: Settings, client, tmp_path: Path) -> None:
    from pipelines.embed import embed_dataset

    path = tmp_path / "few_empty.h5ad"
    case("few_empty_cells").build(path)
    dataset_id = ingested(settings, path, client)
    assert validate_dataset(settings, dataset_id, model=MODEL, client=client).outcome == "pass_with_warnings"
    embedded = embed_dataset(settings, dataset_id, MODEL, device="cpu", progress=False)
    assert embedded.rows == 117
    result = validate_embeddings(settings, dataset_id, MODEL)
    assert result.outcome == "pass" and result.counts["rows"] == result.counts["validated_cells"] == 117
