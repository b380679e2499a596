"""Model files: registry, synthetic files in Helical's layout, the offline loader, the CLI."""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import logging
import pickle
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import ModelFilesError
from pipelines.models import (
    MODELS,
    check_model_files,
    get_spec,
    load_gene_mapping,
    load_gene_medians,
    load_geneformer,
    load_token_dictionary,
    model_files,
    model_status,
    read_manifest,
    synthesize,
)
from pipelines.models.vocabulary import gene_aliases, gene_universe, vocabulary_genes
from pipelines.settings import Settings

V1, V2 = "gf-6L-10M-i2048", "gf-12L-38M-i4096"
# the module (the package re-exports its function under the same name)
synthesize_module = importlib.import_module("pipelines.models.synthesize")


def make_settings(root: Path) -> Settings:
    return Settings(home=root / "home", models_dir=root / "models", lake_uri=f"file://{root / 'lake'}")


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Every model synthesized once with ``tiny=True`` under one prefix."""
    settings = make_settings(tmp_path_factory.mktemp("tiny-models"))
    for name in MODELS:
        synthesize(settings, name, tiny=True)
    return settings


@pytest.fixture(scope="module")
def helical_config_cls():
    from helical.models.geneformer import GeneformerConfig

    return GeneformerConfig


# --- registry ---------------------------------------------------------------------------------


def test_registry_matches_helical_model_map(helical_config_cls) -> None:
    model_map = helical_config_cls().model_map
    assert set(MODELS) == set(model_map)
    for name, spec in MODELS.items():
        entry = model_map[name]
        assert spec.version == entry["model_version"], name
        assert spec.input_size == entry["input_size"], name
        assert spec.special_token == entry["special_token"], name
        assert spec.hidden_size == entry["embsize"], name
        assert spec.vocab_size == len(spec.special_tokens) + len(vocabulary_genes(spec.version))


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_matches_name(name: str) -> None:
    spec = get_spec(name)
    millions = float(re.search(r"-(\d+)M-", name).group(1))
    assert spec.parameter_count() / 1e6 == pytest.approx(millions, rel=0.05)
    assert spec.hidden_size % spec.num_heads == 0


def test_unknown_model_lists_known_names(tiny_settings: Settings) -> None:
    with pytest.raises(ModelFilesError, match=r"unknown model 'gf-1L'.*gf-6L-10M-i2048.*gf-18L-316M-i4096"):
        model_files(tiny_settings, "gf-1L")


# --- synthesized files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_tiny_model_has_every_file_helical_expects(tiny_settings: Settings, helical_config_cls, name: str) -> None:
    files = check_model_files(tiny_settings, name)
    spec = get_spec(name)
    expected = set(helical_config_cls(model_name=name).list_of_files_to_download)
    present = {p.relative_to(files.models_root).as_posix() for p in files.models_root.rglob("*") if p.is_file()}
    assert expected <= present
    assert set(files.helical_files()) == expected
    manifest = read_manifest(files)
    assert manifest["synthetic"] is True and manifest["tiny"] is True and manifest["seed"] == 0
    assert manifest["encoding-type"] == "sclake.model-manifest" and manifest["encoding-version"] == "1"
    assert set(manifest["files"]) == expected
    config = json.loads(files.config.read_text())
    assert config["vocab_size"] == spec.vocab_size
    assert config["max_position_embeddings"] == spec.input_size
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 32
    assert config["hidden_act"] == "relu" and config["layer_norm_eps"] == 1e-12
    tokens = load_token_dictionary(files)
    assert len(tokens) == spec.vocab_size
    assert [t for t, i in sorted(tokens.items(), key=lambda kv: kv[1])][: len(spec.special_tokens)] == list(
        spec.special_tokens
    )
    assert tokens["<pad>"] == 0


def test_full_size_gf_6l_architecture(tmp_path: Path) -> None:
    import torch

    settings = make_settings(tmp_path)
    spec = get_spec(V1)
    files = synthesize(settings, V1, seed=7)
    config = json.loads(files.config.read_text())
    for key, value in spec.bert_config().items():
        assert config[key] == value, key
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (6, 256, 4)
    assert (config["intermediate_size"], config["max_position_embeddings"], config["vocab_size"]) == (512, 2048, 25426)
    assert files.weights.name == "pytorch_model.bin"
    state = torch.load(files.weights, weights_only=True)
    distinct = {t.data_ptr(): t for t in state.values()}
    assert sum(t.numel() for t in distinct.values()) == spec.parameter_count()
    assert state["bert.embeddings.word_embeddings.weight"].shape == (25426, 256)
    manifest = read_manifest(files)
    assert manifest["tiny"] is False and manifest["seed"] == 7 and manifest["parameters"] == spec.parameter_count()
    args = torch.load(files.training_args, weights_only=True)
    assert args["synthetic"] is True and args["seed"] == 7


def test_dictionaries_are_realistic(tiny_settings: Settings) -> None:
    for name in (V1, V2):
        files = model_files(tiny_settings, name)
        vocab = vocabulary_genes(files.version)
        medians = load_gene_medians(files)
        assert set(medians) == set(vocab)
        values = np.array(list(medians.values()))
        assert (values > 0).all()
        assert np.quantile(values, 0.95) / np.quantile(values, 0.05) > 5  # a realistic spread
        mapping = load_gene_mapping(files)
        assert all(mapping[g] == g for g in vocab)
        aliases = gene_aliases(files.version)
        assert aliases and all(mapping[a] == t and t in medians for a, t in aliases.items())
        assert len(set(aliases.values())) < len(aliases)  # some genes collapse from two ids
        assert not set(aliases) & set(gene_universe())  # samples never hold an alias by chance
    # v1 and v2 agree on the median of a gene both vocabularies hold
    m1, m2 = (load_gene_medians(model_files(tiny_settings, n)) for n in (V1, V2))
    shared = sorted(set(m1) & set(m2))[:100]
    assert shared and all(m1[g] == m2[g] for g in shared)


def test_synthesize_again_is_a_no_op_and_force_replaces(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    settings = make_settings(tmp_path)
    files = synthesize(settings, V2, tiny=True, seed=1)
    before = sha256_tree(files.model_dir)
    mtime = files.weights.stat().st_mtime_ns
    assert synthesize(settings, V2, tiny=True, seed=1) == files
    assert files.weights.stat().st_mtime_ns == mtime and sha256_tree(files.model_dir) == before
    with pytest.raises(ModelFilesError, match=r"seed=1; pass --force"):
        synthesize(settings, V2, tiny=True, seed=2)
    weights_1 = load_file(files.weights)
    synthesize(settings, V2, tiny=True, seed=2, force=True)
    assert read_manifest(files)["seed"] == 2
    weights_2 = load_file(files.weights)
    assert not np.array_equal(
        weights_1["bert.encoder.layer.0.attention.self.query.weight"].numpy(),
        weights_2["bert.encoder.layer.0.attention.self.query.weight"].numpy(),
    )
    # the same seed gives the same weights under another prefix
    other = synthesize(make_settings(tmp_path / "other"), V2, tiny=True, seed=1)
    again = load_file(other.weights)
    assert all(np.array_equal(again[k].numpy(), weights_1[k].numpy()) for k in weights_1)
    assert not list(files.version_dir.glob(".*"))  # no temporary folders left behind


def test_crash_leaves_no_half_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synthesize_module, "_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        synthesize(settings, V1, tiny=True)
    files = model_files(settings, V1)
    assert not files.model_dir.exists()
    assert not [p for p in files.version_dir.iterdir() if p.name.startswith(".")]
    assert model_status(settings, V1).present is False
    monkeypatch.undo()
    assert synthesize(settings, V1, tiny=True).model_dir.is_dir()
    assert model_status(settings, V1).present is True


def test_existing_real_dictionary_is_not_overwritten(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    files = model_files(settings, V1)
    files.version_dir.mkdir(parents=True)
    files.token_dictionary.write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1, "ENSG00000000003": 2}))
    with pytest.raises(ModelFilesError, match=r"token_dictionary.pkl.*differs from the synthetic v1 dictionary"):
        synthesize(settings, V1, tiny=True)
    assert len(pickle.loads(files.token_dictionary.read_bytes())) == 3


# --- checks -----------------------------------------------------------------------------------


def test_missing_file_names_it_and_the_command(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    files = synthesize(settings, V1, tiny=True)
    files.config.unlink()
    with pytest.raises(ModelFilesError, match=r"config\.json' is missing; `sclake models synthesize gf-6L-10M-i2048`"):
        check_model_files(settings, V1)
    status = model_status(settings, V1)
    assert status.present is False and status.missing == [files.relative(files.config)]


def test_altered_file_fails_the_checksum(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    files = synthesize(settings, V1, tiny=True)
    data = bytearray(files.weights.read_bytes())
    data[-100] ^= 0xFF
    files.weights.write_bytes(bytes(data))
    with pytest.raises(ModelFilesError, match=r"pytorch_model\.bin' has sha256 .* --tiny --force"):
        check_model_files(settings, V1)
    check_model_files(settings, V1, verify=False)  # presence only
    with files.gene_medians.open("ab") as f:
        f.write(b"x")
    with pytest.raises(ModelFilesError, match=r"gene_median_dictionary\.pkl' has \d+ bytes, the manifest says"):
        check_model_files(settings, V1)


# --- loading through Helical, offline --------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Refuse every connection to a non-loopback address; proxies point at a closed local port."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]  # type: ignore[index]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback or address[1] == 9:  # type: ignore[index]
                attempts.append(address)
                raise ConnectionRefusedError(f"network disabled in this test: {address!r}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return attempts


def tiny_adata(version: str, n_cells: int = 20, n_genes: int = 400, seed: int = 0):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = rng.choice(vocabulary_genes(version), n_genes, replace=False)
    counts = rng.negative_binomial(2, 0.6, size=(n_cells, n_genes)).astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": rng.choice(["T", "B"], n_cells)}, index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame({"ensembl_id": genes}, index=[f"SYN{i}" for i in range(n_genes)]),
    )


@pytest.mark.parametrize(("name", "emb_mode"), [(V1, "cell"), (V2, "cls")])
def test_load_geneformer_offline_and_embed(
    tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list, name: str, emb_mode: str
) -> None:
    import helical.constants.paths
    import helical.utils.downloader

    files = model_files(tiny_settings, name)
    before = sha256_tree(files.models_root)
    # Helical computed its cache directory when first imported; point it elsewhere to prove
    # that the loader does not depend on it.
    elsewhere = tmp_path / "elsewhere" / ".cache" / "helical" / "models"
    monkeypatch.setattr(helical.constants.paths, "CACHE_DIR_HELICAL", elsewhere)
    monkeypatch.setattr(helical.utils.downloader, "CACHE_DIR_HELICAL", elsewhere)

    model = load_geneformer(tiny_settings, name, batch_size=8, emb_mode=emb_mode)
    assert model.model.config.num_hidden_layers == 2
    assert model.files_config["token_path"] == files.token_dictionary
    assert model.tk.gene_token_dict == load_token_dictionary(files)

    adata = tiny_adata(files.version)
    dataset = model.process_data(adata, gene_names="ensembl_id")
    assert len(dataset) == 20
    if get_spec(name).special_token:
        assert all(ids[0] == model.tk.gene_token_dict["<cls>"] for ids in dataset["input_ids"])
    embeddings = model.get_embeddings(dataset)
    assert embeddings.shape == (20, 32) and np.isfinite(embeddings).all()
    assert np.abs(embeddings).sum() > 0 and not np.allclose(embeddings[0], embeddings[1])

    assert no_network == []
    assert sha256_tree(files.models_root) == before
    assert not elsewhere.exists()
    # Helical's own downloader is back in place afterwards
    import helical.models.geneformer.model as helical_model

    assert helical_model.Downloader is helical.utils.downloader.Downloader


def test_load_geneformer_refuses_missing_files_and_bad_modes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ModelFilesError, match=r"gene_median_dictionary\.pkl' is missing"):
        load_geneformer(settings, V1)
    with pytest.raises(ModelFilesError, match=r"emb_mode 'cls' needs a model with a <cls> token"):
        load_geneformer(settings, V1, emb_mode="cls")
    with pytest.raises(ModelFilesError, match=r"emb_mode 'mean' is not one of"):
        load_geneformer(settings, V2, emb_mode="mean")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_synthesize_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.settings import get_settings

    monkeypatch.setenv("SCLAKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCLAKE_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["models", "synthesize", V1, "--tiny", "--seed", "3"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["model"] == V1 and summary["synthetic"] is True and summary["tiny"] is True
        assert summary["seed"] == 3
        assert Path(summary["model_dir"]).is_relative_to(tmp_path / "models")
        check_model_files(make_settings(tmp_path), V1)

        result = runner.invoke(app, ["models", "list", "--json"])
        assert result.exit_code == 0, result.output
        rows = {r["model"]: r for r in json.loads(result.stdout)["models"]}
        assert set(rows) == set(MODELS)
        assert rows[V1]["present"] is True and rows[V1]["synthetic"] is True and rows[V1]["tiny"] is True
        assert rows[V2]["present"] is False and rows[V2]["missing"]
        # the width of the network on disk (what the Parquet holds), not the full-size spec's
        assert (rows[V1]["layers"], rows[V1]["width"], rows[V1]["weights_file"]) == (2, 32, "pytorch_model.bin")
        assert (rows[V2]["layers"], rows[V2]["width"], rows[V2]["weights_file"]) == (12, 512, None)
        result = runner.invoke(app, ["models", "list"])
        assert result.exit_code == 0, result.output
        (row,) = [line for line in result.stdout.splitlines() if f" {V1} " in line]
        assert [c.strip() for c in row.split("│")[1:-1]][:5] == [V1, "v1", "2", "32", "2048"]

        result = runner.invoke(app, ["models", "info", V1])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["model"] == V1 and info["architecture"]["width"] == 256  # the spec's
        assert (info["on_disk"]["width"], info["on_disk"]["synthetic"]) == (32, True)  # what is on disk
        assert info["manifest"]["seed"] == 3 and info["manifest"]["encoding-type"] == "sclake.model-manifest"
        assert info["profile"]["cpu_precision"] in ("fp32", "bf16")
        result = runner.invoke(app, ["models", "info", "gf-nope"])
        assert result.exit_code == 2 and V1 in result.output

        result = runner.invoke(app, ["models", "check", V1])
        assert result.exit_code == 0 and "ok" in result.stdout
        result = runner.invoke(app, ["models", "check", V2])
        assert result.exit_code != 0 and isinstance(result.exception, ModelFilesError)
    finally:
        get_settings.cache_clear()
        # the CLI installs a log handler on the runner's stderr: leave logging as it was
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


# --- weights in any form from_pretrained loads ------------------------------------------------


def resave(settings: Settings, name: str, **save_kwargs: object) -> None:
    """Rewrite a model's weights as ``save_pretrained`` does (safetensors by default), drop the old ones.

    The manifest of the old files goes too: the folder is then what ``transformers`` writes.
    """
    from transformers import BertForMaskedLM

    files = model_files(settings, name)
    model = BertForMaskedLM.from_pretrained(files.model_dir)
    model.save_pretrained(files.model_dir, **save_kwargs)
    (files.model_dir / "pytorch_model.bin").unlink()
    files.manifest.unlink()


@pytest.fixture(scope="module")
def bin_and_safetensors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Settings]:
    """The same tiny v1 model twice: as synthesized (``pytorch_model.bin``) and resaved as ``model.safetensors``."""
    root = tmp_path_factory.mktemp("weights")
    as_bin, as_st = make_settings(root / "bin"), make_settings(root / "st")
    synthesize(as_bin, V1, tiny=True, seed=5)
    synthesize(as_st, V1, tiny=True, seed=5)
    resave(as_st, V1)
    return as_bin, as_st


def test_safetensors_v1_model_is_accepted(bin_and_safetensors: tuple[Settings, Settings]) -> None:
    from pipelines.lineage.embedding_run import model_facts

    as_bin, as_st = bin_and_safetensors
    files = check_model_files(as_st, V1)
    assert files.weights_file == "model.safetensors" and files.weights == files.model_dir / "model.safetensors"
    assert not (files.model_dir / "pytorch_model.bin").exists()
    status = model_status(as_st, V1)
    assert status.present and status.missing == [] and status.weights_file == "model.safetensors"
    assert model_status(as_bin, V1).weights_file == "pytorch_model.bin"
    # lineage names the weights file that was loaded
    facts = model_facts(as_st, V1)
    assert facts["weights_file"] == "model.safetensors"  # logged as the run parameter model.weights_file
    assert model_facts(as_bin, V1)["weights_file"] == "pytorch_model.bin"
    assert f"geneformer/v1/{V1}/model.safetensors" in facts["files"]
    assert f"geneformer/v1/{V1}/pytorch_model.bin" not in facts["files"]


def test_safetensors_v1_model_loads_and_embeds_like_the_bin(
    bin_and_safetensors: tuple[Settings, Settings], no_network: list
) -> None:
    as_bin, as_st = bin_and_safetensors
    adata = tiny_adata("v1")
    out = []
    for settings in (as_bin, as_st):
        model = load_geneformer(settings, V1, batch_size=8)
        out.append(np.asarray(model.get_embeddings(model.process_data(adata.copy(), gene_names="ensembl_id"))))
    assert out[0].shape == (20, 32)
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-6)
    assert no_network == []


@pytest.mark.slow
def test_embed_step_with_safetensors_matches_the_bin(
    bin_and_safetensors: tuple[Settings, Settings], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq
    from distributed import Client

    from pipelines.embed import embed_dataset
    from pipelines.ingest import ingest
    from pipelines.lake import PATHS, Lake
    from pipelines.sample import write_sample

    as_bin, as_st = (s.model_copy(update={"lake_uri": f"file://{tmp_path / 'lake'}"}) for s in bin_and_safetensors)
    lake = Lake(as_bin)
    sample = write_sample(tmp_path / "s.h5ad", cells=60, genes=800, seed=2)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        dataset_id = ingest(as_bin, str(sample), client=client).dataset_id
    result = {}
    for label, settings in (("bin", as_bin), ("st", as_st)):
        lake.unpublish(PATHS.embeddings(V1, dataset_id))
        embed_dataset(settings, dataset_id, V1, device="cpu")
        rels = lake.ls(PATHS.embeddings(V1, dataset_id), suffix=".parquet")
        tables = [pq.read_table(lake.path(r)) for r in rels]
        result[label] = np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])
    assert result["bin"].shape == (60, 32)
    np.testing.assert_allclose(result["st"], result["bin"], rtol=1e-5, atol=1e-6)


def test_sharded_weights_are_accepted_with_every_shard(tmp_path: Path, no_network: list) -> None:
    settings = make_settings(tmp_path)
    synthesize(settings, V1, tiny=True, seed=5)
    reference = load_geneformer(settings, V1).model.state_dict()
    resave(settings, V1, max_shard_size="1MB")
    files = check_model_files(settings, V1)
    assert files.weights_file == "model.safetensors.index.json" and files.sharded
    shards = files.weight_shards()
    assert len(shards) > 1 and all(s.startswith("model-") for s in shards)
    assert {files.relative(files.model_dir / s) for s in shards} <= {files.relative(p) for p in files.required()}
    loaded = load_geneformer(settings, V1).model.state_dict()
    for key, value in reference.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value.numpy())
    (files.model_dir / shards[-1]).unlink()
    with pytest.raises(ModelFilesError, match=re.escape(f"{shards[-1]}' is missing")):
        check_model_files(settings, V1)
    assert model_status(settings, V1).missing == [files.relative(files.model_dir / shards[-1])]
    files.weights.write_text(json.dumps({"weight_map": {"a": "../../elsewhere.safetensors"}}))
    with pytest.raises(ModelFilesError, match="must name shard files in the model folder"):
        check_model_files(settings, V1)
    assert no_network == []


def test_weights_the_manifest_does_not_describe_are_refused(tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    settings = make_settings(tmp_path)
    files = synthesize(settings, V1, tiny=True)
    # safetensors saved beside the synthesized .bin: from_pretrained would load them, unchecked
    BertForMaskedLM.from_pretrained(files.model_dir).save_pretrained(files.model_dir)
    with pytest.raises(ModelFilesError, match=r"would load the weights .*model\.safetensors.*does not describe"):
        check_model_files(settings, V1)


def test_a_synthesized_model_folder_is_readable_by_other_users(tmp_path: Path) -> None:
    """Containers read the model cache as another user: the folder gets the umask's mode, not mkdtemp's 0700."""
    import os

    from pipelines.models.synthesize import synthesize
    from pipelines.settings import Settings

    old = os.umask(0o022)
    try:
        files = synthesize(Settings(home=tmp_path, models_dir=tmp_path), "gf-6L-10M-i2048", tiny=True)
    finally:
        os.umask(old)
    assert files.model_dir.stat().st_mode & 0o777 == 0o755
