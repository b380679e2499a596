"""The embedding step end to end: parity with Helical's get_embeddings, Parquet + DuckDB, resume, Dask, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.embed import embed_dataset, tokenize_dataset
from pipelines.embed.engine import Embedder, EngineOptions
from pipelines.embed.tokens import read_token_part, vocabulary_for
from pipelines.errors import ConfigError
from pipelines.ingest import plan_parts
from pipelines.lake import PATHS, Lake, part_name
from pipelines.models import model_files, synthesize
from pipelines.profiles import bf16_support, bf16_supported, cpu_has_amx
from pipelines.settings import Settings

N_CELLS = 140
PART_CELLS = 64  # three parts of at most 64 cells: 46, 47, 47


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: str) -> Settings:
    root = tmp_path_factory.mktemp("embed")
    return Settings(
        home=root / "home",
        lake_uri=f"file://{root / 'lake'}",
        models_dir=models_dir,
        pushgateway_url=None,
        part_cells=PART_CELLS,
        shard_cells=16,
        dask_workers=2,
    )


@pytest.fixture(scope="module")
def client(lake_settings: Settings):
    """A local Dask cluster: 2 worker processes x 1 thread."""
    from pipelines.dask_cluster import dask_client

    with dask_client(lake_settings) as c:
        yield c


@pytest.fixture(scope="module")
def dataset_id(lake_settings: Settings, tmp_path_factory: pytest.TempPathFactory, client) -> str:
    """A sample written and ingested with the production writers (three Zarr parts)."""
    from pipelines.ingest.run import ingest
    from pipelines.sample import write_sample

    path = write_sample(tmp_path_factory.mktemp("upload") / "sample.h5ad", cells=N_CELLS, genes=2000, seed=7)
    return ingest(lake_settings, str(path), client=client).dataset_id


@pytest.fixture(scope="module")
def adata(lake_settings: Settings, dataset_id: str):
    """The ingested cells as one AnnData with ``var['ensembl_id']``: what a Helical user would pass."""
    from pipelines.dataset import open_dataset

    ds = open_dataset(Lake(lake_settings), dataset_id)
    a = ds.to_anndata()
    a.var["ensembl_id"] = ds.gene_ids
    return a


@pytest.fixture(scope="module")
def helical_embeddings(lake_settings: Settings, tiny_model: str, adata) -> np.ndarray:
    """Helical's own process_data + get_embeddings on the same cells and model files (fp32, CPU)."""
    from pipelines.models import load_geneformer

    gf = load_geneformer(lake_settings, tiny_model, batch_size=24)
    return np.asarray(gf.get_embeddings(gf.process_data(adata.copy(), gene_names="ensembl_id")))


def read_embeddings(settings: Settings, dataset_id: str, model: str):
    """cell ids and embeddings of a published output, parts in order."""
    lake = Lake(settings)
    ids, embs = [], []
    for rel in lake.ls(PATHS.embeddings(model, dataset_id), suffix=".parquet"):
        with lake.open(rel, "rb") as f:
            t = pq.read_table(f)
        ids += t.column("cell_id").to_pylist()
        width = t.schema.field("embedding").type.list_size
        embs.append(np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(t.num_rows, width))
    return ids, np.concatenate(embs)


def fresh(settings: Settings, dataset_id: str, model: str) -> None:
    """Remove a published output (and its staging folder) so that a test embeds again."""
    lake = Lake(settings)
    final = PATHS.embeddings(model, dataset_id)
    lake.unpublish(final)
    lake.rm(PATHS.staging(final), recursive=True)


def test_embeddings_match_helical_fp32(lake_settings, dataset_id, tiny_model, adata, helical_embeddings):
    fresh(lake_settings, dataset_id, tiny_model)
    result = embed_dataset(lake_settings, dataset_id, tiny_model, device="cpu", precision="fp32")
    assert result.precision == "fp32" and result.device == "cpu" and result.attention == "fused"
    assert result.rows == N_CELLS and result.parts == 3 and result.width == 32
    assert [f["rows"] for f in result.files] == [46, 47, 47]
    assert result.cells_per_s > 0 and result.peak_rss_bytes > 0
    assert result.padded_tokens >= result.tokens > 0
    ids, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    assert ids == list(adata.obs_names)  # same cells, same count, row order kept
    cos = cosine(emb, helical_embeddings)
    assert cos.min() >= 0.9999, cos.min()
    again = embed_dataset(lake_settings, dataset_id, tiny_model, precision="fp32")
    assert again.reused and again.rows == N_CELLS


def test_bf16_embeddings_match_helical(lake_settings, dataset_id, tiny_model, helical_embeddings):
    """bf16 through the engine (the profile allows it on CPUs with bf16 hardware only)."""
    tokenize_dataset(lake_settings, dataset_id, tiny_model)
    lake = Lake(lake_settings)
    vocab = vocabulary_for(lake_settings, tiny_model)
    options = EngineOptions(device="cpu", precision="bf16", token_budget=4096)
    model_dir = model_files(lake_settings, tiny_model).model_dir
    embedder = Embedder(model_dir, cls_present=False, eos_present=False, pad_id=0, options=options)
    out = []
    for p in range(3):
        tp = read_token_part(lake, PATHS.token_part(dataset_id, vocab.hash, p))
        out.append(embedder.embed(tp.tokens.ids, tp.tokens.offsets))
    cos = cosine(np.concatenate(out), helical_embeddings)
    assert cos.min() >= 0.99, cos.min()


CPU_BF16 = bf16_support("cpu")


@pytest.mark.skipif(not CPU_BF16.supported, reason=CPU_BF16.reason)
def test_bf16_on_a_cpu_with_bf16_hardware(lake_settings, dataset_id, tiny_model):
    """The whole step in bf16 (the profile's CPU default here) against fp32: per-cell cosine >= 0.99."""
    fresh(lake_settings, dataset_id, tiny_model)
    fp32 = embed_dataset(lake_settings, dataset_id, tiny_model, device="cpu", precision="fp32")
    _, ref = read_embeddings(lake_settings, dataset_id, tiny_model)
    fresh(lake_settings, dataset_id, tiny_model)
    bf16 = embed_dataset(lake_settings, dataset_id, tiny_model, device="cpu")
    assert bf16.precision == "bf16" and bf16.rows == fp32.rows == N_CELLS
    _, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    assert cosine(emb, ref).min() >= 0.99, cosine(emb, ref).min()
    assert np.abs(emb - ref).max() > 0  # computed in bf16 indeed, not fp32 again
    assert bf16.attention == ("fused" if cpu_has_amx() else "blocks")
    published = embed_dataset(lake_settings, dataset_id, tiny_model)
    assert published.reused and published.attention == bf16.attention  # kept in the commit marker
    fresh(lake_settings, dataset_id, tiny_model)


def test_cpu_attention_setting_reaches_the_dask_workers(lake_settings, dataset_id, tiny_model, client):
    """SCLAKE_CPU_ATTENTION=blocks: fp32 in blocks on every worker, the same embeddings to rounding."""
    fresh(lake_settings, dataset_id, tiny_model)
    embed_dataset(lake_settings, dataset_id, tiny_model, precision="fp32")
    _, fused = read_embeddings(lake_settings, dataset_id, tiny_model)
    fresh(lake_settings, dataset_id, tiny_model)
    blocks = lake_settings.model_copy(update={"cpu_attention": "blocks"})
    result = embed_dataset(blocks, dataset_id, tiny_model, precision="fp32", client=client)
    assert result.workers == 2 and result.attention == "blocks"
    _, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    assert cosine(emb, fused).min() >= 0.99999
    fresh(lake_settings, dataset_id, tiny_model)


@pytest.mark.skipif(CPU_BF16.supported, reason="this CPU has bf16 hardware: bf16 is allowed")
def test_bf16_on_a_cpu_without_bf16_hardware_is_refused(lake_settings, dataset_id, tiny_model):
    fresh(lake_settings, dataset_id, tiny_model)
    with pytest.raises(ConfigError, match=r"precision 'bf16' .*neither avx512_bf16 nor amx_bf16.*allowed: \['fp32'\]"):
        embed_dataset(lake_settings, dataset_id, tiny_model, device="cpu", precision="bf16")
    assert not Lake(lake_settings).exists(PATHS.staging(PATHS.embeddings(tiny_model, dataset_id)))


def test_v2_pooling_excludes_cls_and_eos_like_helical(lake_settings, adata, models_dir):
    """A v2 model (<cls> ... <eos>): fp32 embeddings equal Helical's on the same cells."""
    from pipelines.embed.tokenizer import Vocabulary, plan_genes, rank_value_encode
    from pipelines.models import load_geneformer

    name = "gf-12L-38M-i4096"
    synthesize(Settings(home=models_dir, models_dir=models_dir), name, tiny=True)
    cells = adata[:24].copy()
    gf = load_geneformer(lake_settings, name, batch_size=24)
    ref = np.asarray(gf.get_embeddings(gf.process_data(cells.copy(), gene_names="ensembl_id")))
    files = model_files(lake_settings, name)
    vocab = Vocabulary.from_model_files(files)
    toks = rank_value_encode(cells.X.tocsr(), plan_genes(list(cells.var["ensembl_id"]), vocab), vocab)
    options = EngineOptions(token_budget=8192)
    embedder = Embedder(files.model_dir, cls_present=True, eos_present=True, pad_id=vocab.pad_id, options=options)
    cos = cosine(embedder.embed(toks.ids, toks.offsets), ref)
    assert cos.min() >= 0.9999, cos.min()


def test_parquet_is_readable_by_duckdb_with_hive_partitions(lake_settings, dataset_id, tiny_model):
    import duckdb

    embed_dataset(lake_settings, dataset_id, tiny_model)
    lake = Lake(lake_settings)
    root = lake.path(PATHS.embeddings_dir)
    rows = duckdb.sql(
        f"SELECT model, dataset_id, count(*) AS n, count(DISTINCT cell_id) AS ids, any_value(len(embedding)) AS w, "
        f"count(DISTINCT cell_type) AS types FROM read_parquet('{root}/*/*/*.parquet', hive_partitioning = true) "
        "GROUP BY ALL"
    ).fetchall()
    assert rows == [(tiny_model, dataset_id, N_CELLS, N_CELLS, 32, rows[0][5])] and rows[0][5] >= 1
    con = duckdb.connect()
    typ = con.sql(f"DESCRIBE SELECT embedding FROM '{root}/*/*/part-00000.parquet'").fetchall()[0][1]
    assert typ in ("FLOAT[]", "FLOAT[32]")  # Parquet stores the fixed-size list as a list
    rel = PATHS.embedding_part(tiny_model, dataset_id, 0)
    with lake.open(rel, "rb") as f:
        schema = pq.read_schema(f)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["encoding-type"] == "sclake.embeddings" and meta["encoding-version"] == "1"
    precision = "bf16" if bf16_supported("cpu") else "fp32"  # the profile's default on this CPU
    assert meta["model"] == tiny_model and meta["precision"] == precision and meta["synthetic"] == "true"
    assert {"tokenizer_version", "sclake_version", "vocab_hash", "device", "emb_layer"} <= meta.keys()
    assert schema.names[:2] == ["cell_id", "embedding"] and {"cell_type", "donor"} <= set(schema.names)
    info = lake.commit_info(PATHS.embeddings(tiny_model, dataset_id))
    assert info["rows"] == N_CELLS and [f["part"] for f in info["files"]] == [0, 1, 2]
    assert info["files"][0]["sha256"] == lake.sha256(rel)


def test_keep_embeds_exactly_the_given_cells(lake_settings, dataset_id, tiny_model, adata, helical_embeddings):
    fresh(lake_settings, dataset_id, tiny_model)
    keep = {0: np.array([0, 5, 45]), 1: np.array([], dtype=np.int64), 2: np.arange(0, 12, 2)}
    result = embed_dataset(lake_settings, dataset_id, tiny_model, precision="fp32", keep=keep)
    assert result.rows == 3 + 0 + 6 and [f["rows"] for f in result.files] == [3, 0, 6]
    ids, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    starts = [a for _, a, _ in plan_parts(N_CELLS, PART_CELLS)]
    rows = np.concatenate([starts[p] + keep[p] for p in (0, 1, 2)]).astype(int)
    assert ids == [adata.obs_names[i] for i in rows]
    assert cosine(emb, helical_embeddings[rows]).min() >= 0.9999
    fresh(lake_settings, dataset_id, tiny_model)


def _embed_cli_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SCLAKE_LAKE_URI=settings.lake_uri,
        SCLAKE_HOME=str(settings.home),
        SCLAKE_MODELS_DIR=str(settings.models_dir),
        SCLAKE_PUSHGATEWAY_URL="",
        SCLAKE_PART_CELLS=str(settings.part_cells),
    )
    return env


def test_resume_after_a_killed_run(lake_settings, dataset_id, tiny_model, helical_embeddings):
    """A run killed after its first part keeps that part; the rerun embeds only the rest."""
    fresh(lake_settings, dataset_id, tiny_model)
    tokenize_dataset(lake_settings, dataset_id, tiny_model)
    lake = Lake(lake_settings)
    stage = Path(lake.path(PATHS.staging(PATHS.embeddings(tiny_model, dataset_id))))
    cmd = [sys.executable, "-c", "from pipelines.cli import run; run()", "embed", dataset_id, "-m", tiny_model]
    cmd += ["--precision", "fp32"]
    # One cell per batch keeps the run slow enough to be killed between parts.
    proc = subprocess.Popen([*cmd, "--token-budget", "1"], env=_embed_cli_env(lake_settings), start_new_session=True)
    first = stage / f"{part_name(0)}.parquet"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run ended before writing a part"
    assert not lake.is_published(PATHS.embeddings(tiny_model, dataset_id))
    kept = first.stat().st_mtime_ns
    result = embed_dataset(lake_settings, dataset_id, tiny_model, precision="fp32")
    assert result.parts_resumed >= 1 and result.rows == N_CELLS
    final = Path(lake.path(PATHS.embedding_part(tiny_model, dataset_id, 0)))
    assert final.stat().st_mtime_ns == kept  # the staged part was kept, not recomputed
    ids, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    assert len(ids) == len(set(ids)) == N_CELLS
    assert cosine(emb, helical_embeddings).min() >= 0.9999
    assert not list(stage.parent.glob(f"{stage.name}*"))  # nothing left in staging


def test_dask_cluster_gives_the_same_embeddings(lake_settings, dataset_id, tiny_model, helical_embeddings, client):
    fresh(lake_settings, dataset_id, tiny_model)
    result = embed_dataset(lake_settings, dataset_id, tiny_model, precision="fp32", client=client)
    assert result.workers == 2 and result.rows == N_CELLS
    _, emb = read_embeddings(lake_settings, dataset_id, tiny_model)
    assert cosine(emb, helical_embeddings).min() >= 0.9999


def test_tokens_are_shared_by_models_of_one_vocabulary(lake_settings, dataset_id, tiny_model, models_dir):
    first = tokenize_dataset(lake_settings, dataset_id, tiny_model)
    other = "gf-12L-40M-i2048"  # also v1: same dictionaries, input size and framing
    synthesize(Settings(home=models_dir, models_dir=models_dir), other, tiny=True)
    second = tokenize_dataset(lake_settings, dataset_id, other)
    assert second.reused and second.vocab_hash == first.vocab_hash and second.prefix == first.prefix
    assert second.cells == N_CELLS


def test_cli_embed_prints_json_and_refuses_bad_precision(lake_settings, dataset_id, tiny_model, monkeypatch, capsys):
    from pipelines.cli import main
    from pipelines.settings import get_settings

    fresh(lake_settings, dataset_id, tiny_model)
    for k, v in _embed_cli_env(lake_settings).items():
        if k.startswith("SCLAKE_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        assert main(["embed", dataset_id, "--model", tiny_model, "--device", "cpu", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["rows"] == N_CELLS and summary["prefix"].endswith(f"dataset_id={dataset_id}")
        # the profile's default: bf16 where this CPU has bf16 hardware, else fp32
        assert summary["precision"] == ("bf16" if bf16_supported("cpu") else "fp32")
        fresh(lake_settings, dataset_id, tiny_model)
        assert main(["embed", dataset_id, "--model", tiny_model, "--precision", "fp8"]) == 1
        assert "precision 'fp8' is not available" in capsys.readouterr().err
        assert main(["embed", dataset_id, "--model", "gf-0L-nothing"]) == 1
        assert "gf-0L-nothing" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_unknown_dataset_and_device_are_refused(lake_settings, tiny_model):
    from pipelines.errors import LakeError

    with pytest.raises(LakeError, match="0123456789abcdef"):
        embed_dataset(lake_settings, "0123456789abcdef", tiny_model)
    from pipelines.profiles import resolve_device

    with pytest.raises(ConfigError, match="'tpu'"):
        resolve_device("tpu")


def test_unavailable_layer_is_refused_before_any_work(lake_settings, dataset_id, tiny_model):
    with pytest.raises(ConfigError, match="emb_layer 5"):
        embed_dataset(lake_settings, dataset_id, tiny_model, emb_layer=5)


@pytest.mark.integration
def test_embed_on_an_s3_lake(settings_s3, tmp_path, tiny_model):
    """Tokens and embeddings on a real S3 API (rclone), read back with DuckDB through the query views."""
    from pipelines.dask_cluster import dask_client
    from pipelines.ingest.run import ingest
    from pipelines.query import connect
    from pipelines.sample import write_sample

    settings = settings_s3.model_copy(update={"part_cells": 64, "shard_cells": 16})
    path = write_sample(tmp_path / "s3.h5ad", cells=100, genes=2000, seed=3)
    with dask_client(settings) as client:
        ds_id = ingest(settings, str(path), client=client).dataset_id
    result = embed_dataset(settings, ds_id, tiny_model, device="cpu")
    assert result.rows == 100 and result.parts == 2 and result.prefix.startswith("s3://")
    con = connect(settings)
    n, models = con.sql(f"SELECT count(*), any_value(model) FROM embeddings WHERE dataset_id = '{ds_id}'").fetchone()
    assert (n, models) == (100, tiny_model)


@pytest.mark.gpu
def test_cuda_path_fp16_bf16_pinned(lake_settings, dataset_id, tiny_model):
    """On CUDA: fp16 (and bf16 where supported) agree with the CPU fp32 embeddings; inputs go through pinned memory."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tokenize_dataset(lake_settings, dataset_id, tiny_model)
    lake = Lake(lake_settings)
    vocab = vocabulary_for(lake_settings, tiny_model)
    tp = read_token_part(lake, PATHS.token_part(dataset_id, vocab.hash, 0))
    model_dir = model_files(lake_settings, tiny_model).model_dir
    kw = {"cls_present": False, "eos_present": False, "pad_id": 0}
    ref = Embedder(model_dir, options=EngineOptions(device="cpu", precision="fp32"), **kw).embed(
        tp.tokens.ids, tp.tokens.offsets
    )
    precisions = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    for prec in precisions:
        embedder = Embedder(model_dir, options=EngineOptions(device="cuda", precision=prec), **kw)
        got = embedder.embed(tp.tokens.ids, tp.tokens.offsets)
        assert cosine(got, ref).min() >= 0.99, prec
        assert embedder.pinned_batches >= 1
    fresh(lake_settings, dataset_id, tiny_model)
    result = embed_dataset(lake_settings, dataset_id, tiny_model, device="cuda")
    assert result.device == "cuda" and result.precision in ("bf16", "fp16")
    assert result.gpu_peak_memory_bytes and result.rows == N_CELLS
    fresh(lake_settings, dataset_id, tiny_model)
