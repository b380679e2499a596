"""Rank-value tokenizer: token parity with Helical's TranscriptomeTokenizer, truncation, collapse, ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.embed.tokenizer import Tokens, Vocabulary, normalised_values, plan_genes, rank_value_encode
from pipelines.models import model_files, synthesize
from pipelines.models.vocabulary import gene_aliases
from pipelines.settings import Settings

V2_MODEL = "gf-12L-38M-i4096"


@pytest.fixture(scope="session")
def model_settings(models_dir: Path) -> Settings:
    return Settings(home=models_dir, models_dir=models_dir)


@pytest.fixture(scope="session")
def tiny_v2(models_dir: Path) -> str:
    """A tiny v2 model (``<cls>``/``<eos>`` framing, input size 4096)."""
    synthesize(Settings(home=models_dir, models_dir=models_dir), V2_MODEL, tiny=True)
    return V2_MODEL


@pytest.fixture(scope="session")
def adata(tmp_path_factory: pytest.TempPathFactory):
    """300 cells x 3,000 genes of synthetic raw counts, written and read back as Helical reads files."""
    import anndata as ad

    from pipelines.sample import write_sample

    path = write_sample(tmp_path_factory.mktemp("tok") / "sample.h5ad", cells=300, genes=3000, seed=11)
    a = ad.read_h5ad(path)
    a.var["ensembl_id"] = a.var.index
    return a


def helical_tokens(a, files, *, input_size: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Token sequences and lengths from Helical's own tokenizer (tokenize_anndata + create_dataset)."""
    from helical.models.geneformer.geneformer_tokenizer import TranscriptomeTokenizer

    tk = TranscriptomeTokenizer(
        model_input_size=input_size or files.spec.input_size,
        special_token=files.spec.special_token,
        gene_median_file=files.gene_medians,
        token_dictionary_file=files.token_dictionary,
        gene_mapping_file=files.gene_mapping,
    )
    cells, _ = tk.tokenize_anndata(a.copy())
    ds = tk.create_dataset(cells, None)
    return [np.asarray(x) for x in ds["input_ids"]], list(ds["length"])


def assert_same_up_to_ties(ours: Tokens, theirs: list[np.ndarray], x, plan, vocab) -> int:
    """Sequences equal, except that genes of exactly equal value may be swapped. Returns the cells with ties."""
    assert len(ours) == len(theirs)
    rows, tgt, values = normalised_values(x, plan)
    value_of = {}
    for r, t, v in zip(rows.tolist(), plan.tokens[tgt].tolist(), values.tolist(), strict=True):
        value_of[(r, t)] = v
    tied = 0
    for i, ref in enumerate(theirs):
        mine = ours.cell(i)
        assert len(mine) == len(ref), f"cell {i}: {len(mine)} tokens, Helical {len(ref)}"
        if np.array_equal(mine, ref):
            continue
        tied += 1
        for pos in np.flatnonzero(mine != ref):
            assert value_of[(i, int(mine[pos]))] == value_of[(i, int(ref[pos]))], f"cell {i} differs at {pos}"
    return tied


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_tokens_match_helical(which, adata, tiny_model, tiny_v2, model_settings):
    name = tiny_model if which == "v1" else tiny_v2
    files = model_files(model_settings, name)
    vocab = Vocabulary.from_model_files(files)
    plan = plan_genes(list(adata.var["ensembl_id"]), vocab)
    x = adata.X.tocsr()
    ours = rank_value_encode(x, plan, vocab)
    theirs, lengths = helical_tokens(adata, files)
    assert ours.lengths.tolist() == lengths
    assert_same_up_to_ties(ours, theirs, x, plan, vocab)
    if vocab.special_token:
        assert {int(ours.cell(i)[0]) for i in range(len(ours))} == {vocab.cls_id}
        assert {int(ours.cell(i)[-1]) for i in range(len(ours))} == {vocab.eos_id}


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_truncation_matches_helical(which, adata, tiny_model, tiny_v2, model_settings):
    """Cells longer than the input size keep their top genes (input size - 2 with <cls>/<eos>)."""
    name = tiny_model if which == "v1" else tiny_v2
    files = model_files(model_settings, name)
    full = Vocabulary.from_model_files(files)
    vocab = Vocabulary(full.token_dictionary, full.gene_medians, full.gene_mapping, 64, full.special_token)
    plan = plan_genes(list(adata.var["ensembl_id"]), vocab)
    x = adata.X.tocsr()
    ours = rank_value_encode(x, plan, vocab)
    theirs, lengths = helical_tokens(adata, files, input_size=64)
    assert max(lengths) == 64 and ours.lengths.max() == 64
    assert ours.lengths.tolist() == lengths
    assert_same_up_to_ties(ours, theirs, x, plan, vocab)
    # The kept genes are the first ones of the untruncated sequence.
    untruncated = rank_value_encode(x, plan_genes(list(adata.var["ensembl_id"]), full), full)
    skip = 1 if vocab.special_token else 0
    for i in range(len(ours)):
        kept = ours.cell(i)[skip : len(ours.cell(i)) - skip]
        assert np.array_equal(kept, untruncated.cell(i)[skip : skip + len(kept)])


def test_n_counts_column_used_like_helical(adata, tiny_model, model_settings):
    """Helical normalises by obs['n_counts'] when present; so does the tokenizer when given it."""
    files = model_files(model_settings, tiny_model)
    vocab = Vocabulary.from_model_files(files)
    a = adata[:80].copy()
    rng = np.random.default_rng(3)
    a.obs["n_counts"] = np.asarray(a.X.sum(axis=1)).ravel() * rng.uniform(0.5, 2.0, a.n_obs)
    plan = plan_genes(list(a.var["ensembl_id"]), vocab)
    ours = rank_value_encode(a.X.tocsr(), plan, vocab, n_counts=a.obs["n_counts"].to_numpy())
    theirs, _ = helical_tokens(a, files)
    assert_same_up_to_ties(ours, theirs, a.X.tocsr(), plan, vocab)


def test_gene_ids_outside_the_vocabulary_are_ignored(tiny_model, model_settings):
    vocab = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    genes = list(vocab.gene_medians)[:3]
    ids = [genes[0], "ENSG99999999999", None, genes[1], "<pad>", genes[2]]
    plan = plan_genes(ids, vocab)
    assert plan.target.tolist() == [0, -1, -1, 1, -1, 2]
    assert not plan.collapse
    x = sp.csr_matrix(np.array([[5, 100, 7, 1, 3, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))
    toks = rank_value_encode(x, plan, vocab)
    assert toks.lengths.tolist() == [2, 0]
    assert set(toks.cell(0).tolist()) == {vocab.token_dictionary[genes[0]], vocab.token_dictionary[genes[1]]}


def test_aliases_are_collapsed_onto_their_gene(tiny_model, model_settings):
    """Two ids mapping onto one vocabulary gene: counts summed per cell (Helical 2.2.0 raises KeyError here)."""
    vocab = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    alias, target = next(iter(gene_aliases("v1").items()))
    others = [g for g in list(vocab.gene_medians)[:40] if g != target]
    ids = [target, *others, alias]
    rng = np.random.default_rng(5)
    counts = rng.poisson(2.0, size=(30, len(ids))).astype(np.float32)
    plan = plan_genes(ids, vocab)
    assert plan.collapse
    toks = rank_value_encode(sp.csr_matrix(counts), plan, vocab)
    merged = counts[:, :-1].copy()
    merged[:, 0] += counts[:, -1]
    # Totals are the cells' totals over every column (the alias column included): the same after merging.
    expected = rank_value_encode(sp.csr_matrix(merged), plan_genes(ids[:-1], vocab), vocab)
    assert np.array_equal(toks.offsets, expected.offsets)
    assert np.array_equal(toks.ids, expected.ids)
    # As in Helical, ids are looked up as they are when nothing collapses: a lower-case alias is ignored.
    lower = plan_genes([target, *others, alias.lower()], vocab)
    assert not lower.collapse and lower.target[-1] == -1


def _hand_vocab(special: bool, input_size: int = 16) -> Vocabulary:
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if special else [])
    genes = [f"ENSG{i:011d}" for i in range(1, 7)]
    tokens = {t: i for i, t in enumerate(specials + genes)}
    medians = dict(zip(genes, [1.0, 2.0, 1.0, 0.5, 4.0, 1.0], strict=True))
    return Vocabulary(tokens, medians, {g: g for g in genes}, input_size, special)


def test_equal_values_keep_var_order():
    vocab = _hand_vocab(special=False)
    genes = list(vocab.gene_medians)
    plan = plan_genes(genes, vocab)
    # Genes 1, 3 and 6 share a median; equal counts give exactly equal values.
    x = sp.csr_matrix(np.array([[3, 0, 3, 0, 0, 3], [1, 4, 1, 0, 8, 0]], dtype=np.float32))
    toks = rank_value_encode(x, plan, vocab)
    t = vocab.token_dictionary
    assert toks.cell(0).tolist() == [t[genes[0]], t[genes[2]], t[genes[5]]]
    # 8/4 = 4/2 = 2 > 1/1 = 1/1: ties in var order.
    assert toks.cell(1).tolist() == [t[genes[1]], t[genes[4]], t[genes[0]], t[genes[2]]]


def test_special_tokens_frame_every_cell_even_empty_ones():
    vocab = _hand_vocab(special=True, input_size=4)
    plan = plan_genes(list(vocab.gene_medians), vocab)
    x = sp.csr_matrix(np.array([[0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]], dtype=np.int64))
    toks = rank_value_encode(x, plan, vocab)
    assert toks.lengths.tolist() == [2, 4]
    assert toks.cell(0).tolist() == [vocab.cls_id, vocab.eos_id]
    assert toks.cell(1)[0] == vocab.cls_id and toks.cell(1)[-1] == vocab.eos_id


def test_vocabulary_hash_is_shared_by_models_of_one_vocabulary(tiny_model, model_settings, tiny_v2):
    v1 = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    again = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    v2 = Vocabulary.from_model_files(model_files(model_settings, tiny_v2))
    assert v1.hash == again.hash and len(v1.hash) == 16
    assert v1.hash != v2.hash
    shorter = Vocabulary(v1.token_dictionary, v1.gene_medians, v1.gene_mapping, 1024, v1.special_token)
    assert shorter.hash != v1.hash


def test_tokens_take_selects_cells_in_order():
    toks = Tokens(np.arange(10, dtype=np.int32), np.array([0, 3, 3, 7, 10]))
    sub = toks.take(np.array([3, 0, 1]))
    assert [sub.cell(i).tolist() for i in range(3)] == [[7, 8, 9], [0, 1, 2], []]


def test_block_with_other_gene_count_is_refused(tiny_model, model_settings):
    vocab = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    plan = plan_genes(list(vocab.gene_medians)[:5], vocab)
    with pytest.raises(ValueError, match="5"):
        rank_value_encode(sp.csr_matrix(np.ones((2, 4), dtype=np.float32)), plan, vocab)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint16", "float64", "float16"])
def test_the_same_counts_give_the_same_tokens_whatever_the_stored_dtype(dtype, adata, tiny_model, model_settings):
    """Counts stored as integers or wider floats are tokenised as the float32 counts Helical sees
    in its common case (float16 only where its values are exact, as small counts are)."""
    vocab = Vocabulary.from_model_files(model_files(model_settings, tiny_model))
    plan = plan_genes(list(adata.var["ensembl_id"]), vocab)
    x32 = adata.X.tocsr().astype(np.float32)
    if dtype == "float16":
        x32.data = np.minimum(x32.data, 2048)  # float16 holds every integer up to 2,048 exactly
    other = x32.astype(dtype)
    assert np.array_equal(other.data.astype(np.float32), x32.data)
    ours, reference = rank_value_encode(other, plan, vocab), rank_value_encode(x32, plan, vocab)
    assert np.array_equal(ours.offsets, reference.offsets)
    assert np.array_equal(ours.ids, reference.ids), f"{dtype}: other tokens than for float32"


def test_counts_float32_cannot_hold_exactly_keep_their_dtype(tiny_model, model_settings):
    from pipelines.embed.tokenizer import counts_as_float32

    x = sp.csr_matrix(np.array([[2**24 + 1, 3], [0, 5]], dtype=np.int64))
    assert counts_as_float32(x).dtype == np.int64  # float32 would round 16,777,217
    y = sp.csr_matrix(np.array([[0.5, 0.1]], dtype=np.float64))
    assert counts_as_float32(y).dtype == np.float64  # 0.1 is not a float32
    assert counts_as_float32(sp.csr_matrix(np.array([[7, 0]], dtype=np.int16))).dtype == np.float32


@pytest.mark.parametrize("dtype", ["int64", "int32", "float64"])
def test_a_near_tie_is_ordered_as_in_float32_whatever_the_dtype(dtype):
    """Two genes whose normalised values differ only in the last bits: computed in int64/float64
    arithmetic they swap places; as float32 counts they keep Helical's float32 order."""
    genes = [f"ENSG{i:011d}" for i in range(1, 4)]
    medians = [6.886865646358878, 4.902514449856197, 6.9156226326523065]
    vocab = Vocabulary(
        {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(genes)}},
        dict(zip(genes, medians, strict=True)),
        {g: g for g in genes},
        16,
        False,
    )
    plan = plan_genes(genes, vocab)
    counts = np.array([[59, 42, 23]])
    as_float32 = rank_value_encode(sp.csr_matrix(counts.astype(np.float32)), plan, vocab).cell(0).tolist()
    assert rank_value_encode(sp.csr_matrix(counts.astype(dtype)), plan, vocab).cell(0).tolist() == as_float32
