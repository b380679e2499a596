"""Encoder layers and pooling against transformers' BertForMaskedLM; length-bucketed batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.embed.batching import pad_batch, padding_share, plan_batches
from pipelines.embed.encoder import layers_needed, load_encoder, pool_cells
from pipelines.models import model_files
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def model_dir(models_dir: Path, tiny_model: str) -> Path:
    return model_files(Settings(home=models_dir, models_dir=models_dir), tiny_model).model_dir


@pytest.fixture(scope="module")
def hf_model(model_dir: Path):
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lengths = np.array([50, 37, 12, 50, 1])
    ids = np.zeros((len(lengths), lengths.max()), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(2, 25_000, n)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


@pytest.mark.parametrize("emb_layer", [-1, 0, 1])
def test_hidden_states_equal_transformers_for_each_layer(model_dir, hf_model, emb_layer):
    """``hidden_states[emb_layer]`` of BertForMaskedLM (what Helical takes) on the non-padded positions."""
    ids, lengths = _batch()
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    enc = load_encoder(model_dir, emb_layer=emb_layer)
    assert len(enc.layers) == layers_needed(emb_layer, 2) == (2 if emb_layer == -1 else emb_layer)
    with torch.inference_mode():
        ref = hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[emb_layer]
        ours = enc(ids, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[i, :n], ref[i, :n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-linears", "torch-linears"])
@pytest.mark.parametrize("special", [False, True])
def test_packed_cells_give_the_padded_results(model_dir, special, onednn):
    """The CPU path packs cells end to end (no padding, attention per cell, linears in oneDNN
    by default): same hidden states and pooling as the padded batch (F.linear)."""
    from pipelines.embed.encoder import pool_packed

    ids, lengths = _batch(1)
    enc = load_encoder(model_dir, onednn_linears=None if onednn else False)
    assert enc.onednn_linears is onednn  # fp32 on the CPU: oneDNN's linear by default
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    packed = torch.cat([ids[i, :n] for i, n in enumerate(lengths.tolist())])
    with torch.inference_mode():
        padded = enc(ids, lengths)
        flat = enc.forward_packed(packed, offsets)
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(flat[offsets[i] : offsets[i + 1]], padded[i, :n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            pool_packed(flat, offsets, special, special), pool_cells(padded, lengths, special, special), equal_nan=True
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
def test_onednn_linear_equals_f_linear(dtype, relu):
    """cpu_linear in oneDNN (bias and ReLU in the product) gives F.linear's numbers to rounding."""
    from pipelines.embed.encoder import cpu_linear, onednn_linear_available

    if not onednn_linear_available(dtype):
        pytest.skip(f"oneDNN has no {dtype} linear on this CPU")
    gen = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(96, 160).to(dtype)
    x = torch.randn(300, 96, generator=gen).to(dtype)
    with torch.inference_mode():
        ref = cpu_linear(x, linear, relu=relu)
        out = cpu_linear(x, linear, relu=relu, onednn=True)
    assert out.dtype == dtype and out.shape == (300, 160)
    if relu:
        assert (out >= 0).all() and (out == 0).any()
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}  # bf16: torch's defaults
    torch.testing.assert_close(out, ref, **tolerance)


@pytest.mark.parametrize("length", [1, 37, 256, 700])  # one block, a full one, three unequal ones
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_attention_equals_the_fused_kernel(length, dtype):
    """Attention in blocks of query rows (bf16 on the CPU) gives what PyTorch's fused kernel
    gives, for cells shorter and longer than a block and not a multiple of it."""
    import torch.nn.functional as F

    from pipelines.embed.encoder import block_attention

    gen = torch.Generator().manual_seed(length)
    qkv = torch.randn(length, 3, 4, 16, generator=gen).permute(1, 2, 0, 3)  # strided, as in a packed batch
    ref = F.scaled_dot_product_attention(qkv[0:1], qkv[1:2], qkv[2:3], scale=0.25)[0].transpose(0, 1)
    out = torch.full((length, 4, 16), float("nan"), dtype=dtype)
    cell = qkv.to(dtype)
    block_attention(cell[0], cell[1], cell[2], 0.25, out)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        cos = F.cosine_similarity(out.float().reshape(length, -1), ref.reshape(length, -1), dim=1)
        assert cos.min() >= 0.999, cos.min()


@pytest.mark.parametrize("attention", ["blocks", "fused"])
def test_packed_bf16_cells_match_the_padded_bf16_path(model_dir, attention, monkeypatch):
    """bf16 on the CPU: packed cells (either attention, layer norms on bf16 input) against the
    padded batch (the fused kernel with a mask, as on a GPU): per-position cosine >= 0.99."""
    import torch.nn.functional as F

    from pipelines.embed import encoder

    ran = []
    real = encoder.block_attention
    monkeypatch.setattr(encoder, "block_attention", lambda *a: ran.append(1) or real(*a))
    ids, lengths = _batch(2)
    enc = load_encoder(model_dir, precision="bf16", attention=attention)
    assert enc.attention.kind == attention and enc.attention.reason == f"{attention}: as set"
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    packed = torch.cat([ids[i, :n] for i, n in enumerate(lengths.tolist())])
    with torch.inference_mode():
        padded = enc(ids, lengths).float()
        flat = enc.forward_packed(packed, offsets).float()
    assert bool(ran) == (attention == "blocks")  # the chosen kernel is the one that ran
    assert flat.dtype == torch.float32 and torch.isfinite(flat).all()
    for i, n in enumerate(lengths.tolist()):
        cos = F.cosine_similarity(flat[offsets[i] : offsets[i + 1]], padded[i, :n], dim=1)
        assert cos.min() >= 0.99, (i, cos.min())


def test_cpu_attention_follows_the_cpu_not_a_timing(model_dir):
    """``auto``: fp32 in the fused kernel; bf16 in the fused kernel with AMX, in blocks without;
    a kind that is set is taken as it is; anything else is refused. Both kinds can be timed."""
    from pipelines.embed.encoder import choose_cpu_attention, time_attention
    from pipelines.profiles import cpu_has_amx

    assert choose_cpu_attention(torch.float32).kind == choose_cpu_attention(torch.float32, amx=True).kind == "fused"
    assert choose_cpu_attention(torch.bfloat16).kind == "blocks"
    assert choose_cpu_attention(torch.bfloat16, amx=True).kind == "fused"
    assert choose_cpu_attention(torch.bfloat16, requested="fused").kind == "fused"
    assert choose_cpu_attention(torch.float32, requested="blocks").reason == "blocks: as set"
    assert load_encoder(model_dir, precision="bf16").attention.kind == "blocks"
    assert load_encoder(model_dir, precision="bf16", amx=True).attention.kind == "fused"
    with pytest.raises(ValueError, match="attention 'flash' is not one of"):
        load_encoder(model_dir, attention="flash")
    assert cpu_has_amx({"avx512_bf16", "amx_tile", "amx_bf16"}) and not cpu_has_amx({"avx512_bf16", "amx_tile"})
    seconds = time_attention(2, 16, torch.bfloat16, length=300)
    assert set(seconds) == {"blocks", "fused"} and all(t > 0 for t in seconds.values())


def test_layers_outside_helicals_range_are_refused(model_dir):
    with pytest.raises(ValueError, match="emb_layer 2"):
        load_encoder(model_dir, emb_layer=2)
    with pytest.raises(ValueError, match="emb_layer -2"):
        layers_needed(-2, 6)


def test_pooling_excludes_cls_and_eos_and_padding():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    lengths = torch.tensor([5, 3])
    # v1: mean over [0, length)
    assert pool_cells(hidden, lengths, False, False).ravel().tolist() == [2.0, 6.0]
    # v2: <cls> at 0 and <eos> at length-1 left out
    assert pool_cells(hidden, lengths, True, True).ravel().tolist() == [2.0, 6.0]
    assert torch.isnan(pool_cells(hidden, torch.tensor([2, 2]), True, True)).all()


def test_batches_cover_every_cell_once_within_the_budget():
    rng = np.random.default_rng(1)
    lengths = rng.integers(200, 2048, size=1000)
    batches = plan_batches(lengths, 16384)
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(1000))
    assert all(b.tokens <= 16384 for b in batches)
    assert all(b.width == lengths[b.rows].max() for b in batches)
    assert padding_share(batches, lengths) < 0.02  # sorted buckets: almost no padding
    # Helical's way, 24 cells in arrival order, pads far more.
    arrival = [lengths[i : i + 24] for i in range(0, 1000, 24)]
    assert 1 - lengths.sum() / sum(len(b) * b.max() for b in arrival) > 0.3


def test_a_cell_longer_than_the_budget_gets_a_batch_of_its_own_and_widths_round_up():
    batches = plan_batches(np.array([10, 5000, 9]), 4096, pad_multiple=8)
    assert [b.rows.tolist() for b in batches] == [[1], [0, 2]]
    assert [b.width for b in batches] == [5000, 16]
    with pytest.raises(ValueError, match="length 0"):
        plan_batches(np.array([3, 0]), 100)


def test_pad_batch_places_each_cell_left_aligned():
    ids = np.arange(1, 11, dtype=np.int32)
    offsets = np.array([0, 4, 5, 10])
    out = pad_batch(ids, offsets, np.array([2, 0, 1]), 6, pad_id=0)
    assert out.tolist() == [[6, 7, 8, 9, 10, 0], [1, 2, 3, 4, 0, 0], [5, 0, 0, 0, 0, 0]]
