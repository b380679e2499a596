"""Geneformer's BERT encoder for inference: torch only, no masked-LM head, only the layers needed.

Helical's ``get_embs`` runs ``BertForMaskedLM`` with ``output_hidden_states=True`` and
takes ``hidden_states[emb_layer]``: index 0 is the embedding output and index ``k`` the
output of layer ``k``, so ``emb_layer=-1`` (the default) is the last layer and
``emb_layer=k >= 0`` needs only the first ``k`` layers. This module builds the same
network from the model's ``config.json`` and weights, skips the vocabulary projection
Helical computes for every token and the hidden states it keeps, runs only
``layers_needed(emb_layer)`` layers, and pools as Helical does for ``emb_mode="cell"``:
the mean over each cell's non-padding positions, ``<cls>`` and ``<eos>`` excluded when the
vocabulary has them.

Attention is PyTorch's ``scaled_dot_product_attention`` with a key-padding mask (fused
kernels on CPU and CUDA). For packed cells on the CPU in bf16/fp16 it runs in that fused
kernel on CPUs with AMX and in blocks of query rows (:func:`block_attention`) on the others
(:func:`choose_cpu_attention`). In bf16/fp16 the weights of the linear layers are converted
once; layer norms, softmax accumulation and pooling stay in fp32 inputs where it matters.
On the CPU the linears of packed cells run in oneDNN's linear (:func:`cpu_linear`), and
packed rows and attention blocks are padded to a few shapes, so that oneDNN's per-shape
state, and with it the process's memory, stays bounded (``benchmarks/embed_memory.py``).

Only ``torch`` (and ``safetensors`` for ``.safetensors`` weights) is imported, so the inner
loop runs where neither anndata nor Helical is installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ACTIVATIONS = {
    "relu": F.relu_,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class EncoderConfig:
    """The fields of a BERT ``config.json`` that the encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    @classmethod
    def from_json(cls, path: str | Path) -> EncoderConfig:
        raw = json.loads(Path(path).read_text())
        names = set(cls.__dataclass_fields__)
        cfg = cls(**{k: raw[k] for k in names if k in raw})
        if cfg.position_embedding_type != "absolute":
            raise ValueError(
                f"{str(path)!r}: position_embedding_type {cfg.position_embedding_type!r} is not 'absolute'"
            )
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{str(path)!r}: hidden_act {cfg.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"{str(path)!r}: hidden_size is not a multiple of num_attention_heads")
        return cfg


def layers_needed(emb_layer: int, num_layers: int) -> int:
    """Layers to run for Helical's ``emb_layer`` (``hidden_states[emb_layer]``).

    Helical accepts ``-1`` (the last layer) and ``0 .. num_layers - 1``; ``0`` is the
    embedding output (no layer at all).
    """
    if emb_layer == -1:
        return num_layers
    if 0 <= emb_layer < num_layers:
        return emb_layer
    raise ValueError(f"emb_layer {emb_layer!r} is not available; use -1 or 0..{num_layers - 1}")


# Query rows per block in block_attention: a block's scores, [heads, rows, length] in bf16,
# stay within a core's L2 cache for the cells' usual lengths (about 2.7 MB at 1,300 tokens).
ATTENTION_ROWS = 256
# block_attention pads a cell's keys (and its last block's query rows) to a multiple of this.
ATTENTION_PAD = 128


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``: the padded sizes of packed rows and attention keys."""
    return -(-n // multiple) * multiple


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """Attention of one cell without a mask, written into ``out`` ``[length, heads, d]``.

    ``q``, ``k``, ``v`` are ``[heads, length, d]``. For each block of query rows: the scores
    ``q·kᵀ`` (matrix products that accumulate in fp32), their softmax (computed in fp32,
    stored in the input dtype, as a bf16 BERT does) and the product with ``v``. The products
    run in oneDNN's bf16 kernels; on a CPU with AVX512-BF16 and no AMX, PyTorch's fused CPU
    kernel ran bf16 attention slower than these blocks, and slower than its own fp32
    (docs/embed.md, "Performance").

    The keys (and the last block's query rows) are padded with zeros up to a multiple of
    :data:`ATTENTION_PAD`, the padded keys' scores set to ``-inf`` (their softmax weight is
    exactly 0): the products then take few distinct shapes whatever the cells' lengths, and
    oneDNN's state for each shape stays bounded.
    """
    n = q.shape[1]
    padded = round_up(n, ATTENTION_PAD)
    q = q * scale
    kt = F.pad(k.transpose(-1, -2), (0, padded - n)).contiguous()
    v = F.pad(v, (0, 0, 0, padded - n)).contiguous()
    if padded > n:
        q = F.pad(q, (0, 0, 0, padded - n))
    for a in range(0, n, ATTENTION_ROWS):
        scores = torch.matmul(q[:, a : a + ATTENTION_ROWS], kt)
        scores[..., n:] = float("-inf")
        rows = min(n - a, ATTENTION_ROWS)
        out[a : a + rows] = torch.matmul(torch.softmax(scores, -1), v)[:, :rows].transpose(0, 1)


ATTENTION_KINDS = ("auto", "fused", "blocks")
# Packed batches' rows are rounded up to a multiple of this (GeneformerEncoder.forward_packed).
PACKED_ROWS = 512
# Tokens of the cell time_attention times by default: near the median length of Geneformer inputs.
TIMED_LENGTH = 1024


@dataclass(frozen=True)
class AttentionChoice:
    """How the encoder computes attention on the CPU (``kind``: ``fused`` or ``blocks``), and why."""

    kind: str
    reason: str


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """Attention of one cell in PyTorch's fused kernel; arguments as in :func:`block_attention`."""
    out.copy_(F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0].transpose(0, 1))


def time_attention(heads: int, head_dim: int, dtype: torch.dtype, length: int = TIMED_LENGTH) -> dict[str, float]:
    """Best time in seconds of each kind (``blocks``, ``fused``) on one cell of ``length`` random
    tokens with torch's current threads: one warm-up run, then the best of three (what
    ``benchmarks/embed.py`` reports as ``attention_kernels``)."""
    import time

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(heads, length, head_dim, generator=gen).to(dtype) for _ in range(3))
    out = torch.empty(length, heads, head_dim, dtype=dtype)
    seconds = {}
    with torch.inference_mode():
        for kind, run in (("blocks", block_attention), ("fused", _fused_attention)):
            times = []
            for _ in range(4):
                start = time.perf_counter()
                run(q, k, v, 1.0 / math.sqrt(head_dim), out)
                times.append(time.perf_counter() - start)
            seconds[kind] = min(times[1:])
    return seconds


def choose_cpu_attention(dtype: torch.dtype, *, requested: str = "auto", amx: bool = False) -> AttentionChoice:
    """How packed cells' attention runs on the CPU: the same for every process of a machine.

    ``requested`` ``fused`` or ``blocks`` is taken as it is. ``auto``:

    * fp32: the fused kernel (the engine runs at 73-79% of the fp32 matmul peak with it on
      Zen 3 and Zen 4; on the Zen 4 the blocks ran fp32 attention 1.2x slower);
    * bf16/fp16 on a CPU with AMX (``amx``): the fused kernel, which multiplies its tiles
      with AMX itself (PyTorch packs them for AMX);
    * bf16/fp16 on others: the blocks, whose products run in oneDNN's AVX512-BF16 kernels
      (on the Zen 4: 1.5x the fused kernel's rate at the median cell, 34% more cells/s in
      the model; docs/embed.md, "Performance").

    Fixed rules, not a timing at start: a timing picks one kernel in one process and the
    other in the next where the two are close (it depends on the threads and the load), and
    the same cells would then give embeddings that differ by bf16 rounding.
    """
    if requested not in ATTENTION_KINDS:
        raise ValueError(f"attention {requested!r} is not one of {list(ATTENTION_KINDS)}")
    if requested != "auto":
        return AttentionChoice(requested, f"{requested}: as set")
    if dtype == torch.float32:
        return AttentionChoice("fused", "fused: fp32 runs in PyTorch's fused kernel")
    if amx:
        return AttentionChoice("fused", "fused: the CPU has AMX, which PyTorch's fused kernel computes with")
    return AttentionChoice("blocks", "blocks: no AMX; oneDNN's bf16 products in blocks of query rows")


def onednn_linear_available(dtype: torch.dtype) -> bool:
    """Whether :func:`cpu_linear` runs ``dtype`` in oneDNN here: fp32 wherever PyTorch has
    oneDNN, bf16 where oneDNN reports bf16 instructions."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def cpu_linear(x: torch.Tensor, linear: nn.Linear, *, relu: bool = False, onednn: bool = False) -> torch.Tensor:
    """``linear(x)`` (then an in-place ReLU with ``relu``).

    ``onednn``: in oneDNN's linear (``mkldnn::_linear_pointwise``, the op PyTorch's compiler
    emits for CPU linears), which adds the bias, and applies the ReLU, as it writes the
    product: no pass that copies the bias into the output first. On the Zen 4 it ran the
    encoder's four linears 1.1-1.2x faster than ``F.linear`` in fp32, 1.05-1.15x in bf16.
    """
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "relu" if relu else "none", [], "")
    y = linear(x)
    return torch.relu_(y) if relu else y


class _LayerNorm(nn.LayerNorm):
    """Layer norm computed in fp32 whatever the activation dtype.

    On the CPU, PyTorch's kernel takes bf16/fp16 input with the fp32 parameters and computes
    in fp32 itself, without converting the activations to fp32 and back around it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or x.device.type == "cpu":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class _Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = _LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = _LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.relu = cfg.hidden_act == "relu"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Padded batch ``[batch, seq, hidden]`` with a key-padding mask."""
        b, s, h = x.shape
        d = h // self.heads
        qkv = self.qkv(x).view(b, s, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, scale=1.0 / math.sqrt(d))
        return self._rest(ctx.transpose(1, 2).reshape(b, s, h), x)

    def forward_packed(
        self, x: torch.Tensor, bounds: list[tuple[int, int]], blocks: bool, onednn: bool = False
    ) -> torch.Tensor:
        """Packed cells ``[tokens, hidden]``: attention runs per cell, so no padding and no mask.

        ``blocks``: :func:`block_attention`, else PyTorch's fused kernel (:func:`choose_cpu_attention`).
        ``onednn``: the linears in oneDNN (:func:`cpu_linear`).
        """
        t, h = x.shape
        d = h // self.heads
        qkv = cpu_linear(x, self.qkv, onednn=onednn).view(t, 3, self.heads, d)
        ctx = torch.empty((t, self.heads, d), dtype=x.dtype, device=x.device)
        ctx[bounds[-1][1] :].zero_()  # rows in no cell (forward_packed's rounding): zeros, not stale memory
        attention = block_attention if blocks else _fused_attention
        for a, b in bounds:
            cell = qkv[a:b].permute(1, 2, 0, 3)  # [3, heads, length, d]
            attention(cell[0], cell[1], cell[2], 1.0 / math.sqrt(d), ctx[a:b])
        return self._rest(ctx.view(t, h), x, onednn)

    def _rest(self, ctx: torch.Tensor, x: torch.Tensor, onednn: bool = False) -> torch.Tensor:
        # In-place residual adds and activation: no extra activation-sized buffers.
        h = cpu_linear(ctx, self.attn_out, onednn=onednn)
        h += x
        x = self.attn_norm(h)
        if self.relu:
            h = cpu_linear(x, self.ffn_in, relu=True, onednn=onednn)
        else:
            h = self.act(cpu_linear(x, self.ffn_in, onednn=onednn))
        h = cpu_linear(h, self.ffn_out, onednn=onednn)
        h += x
        return self.ffn_norm(h)


class GeneformerEncoder(nn.Module):
    """BERT embeddings plus the first ``num_layers`` encoder layers (inference only).

    Build it with :func:`load_encoder`.
    """

    def __init__(self, cfg: EncoderConfig, num_layers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        # Token type 0 for every token: its embedding is a constant added to every position.
        self.register_buffer("token_type", torch.zeros(cfg.hidden_size))
        self.norm = _LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(num_layers))
        # How attention runs: the fused kernel (padded batches on CUDA), unless load_encoder
        # chooses otherwise for the CPU it runs on (forward_packed).
        self.attention = AttentionChoice("fused", "fused: PyTorch's fused kernel")
        # Whether packed cells' linears run in oneDNN (cpu_linear); load_encoder sets it on the CPU.
        self.onednn_linears = False

    @property
    def width(self) -> int:
        return self.cfg.hidden_size

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor, padded: bool | None = None) -> torch.Tensor:
        """Hidden states ``[batch, seq, hidden]`` of the last layer run (padding rows included).

        ``padded`` says whether any row is shorter than the batch (the caller knows it on the
        host; ``None`` checks ``lengths``, which waits for the device).
        """
        s = input_ids.shape[1]
        if s > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence length {s} exceeds the model's {self.cfg.max_position_embeddings} positions")
        pos = self.position.weight[:s] + self.token_type
        x = self.norm(self.word(input_ids) + pos)
        if padded is None:
            padded = bool((lengths < s).any())
        # Key-padding mask, [batch, 1, 1, seq]; None when no row is padded.
        mask = None
        if padded:
            mask = (torch.arange(s, device=input_ids.device) < lengths[:, None])[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward_packed(self, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[tokens, hidden]`` of cells packed end to end (cell ``i``: ``offsets[i]:offsets[i+1]``).

        The same numbers as :meth:`forward` on the non-padding positions, without computing padding.

        The rows the linear layers see are rounded up to a multiple of :data:`PACKED_ROWS` (the
        rows added are zeros, in no cell: no attention reads them and they are not returned).
        oneDNN keeps state for every shape of product it has run, which grew the process by
        about 20 MB per distinct token count in fp32; batches of few distinct row counts keep it flat.
        """
        lengths = offsets[1:] - offsets[:-1]
        if int(lengths.max()) > self.cfg.max_position_embeddings:
            raise ValueError(f"a cell exceeds the model's {self.cfg.max_position_embeddings} positions")
        t = input_ids.shape[0]
        starts = torch.repeat_interleave(offsets[:-1], lengths)
        positions = torch.arange(t, device=input_ids.device) - starts
        x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type)
        rows = round_up(t, PACKED_ROWS)
        if rows > t:
            x = torch.cat([x, x.new_zeros(rows - t, x.shape[1])])
        bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        for layer in self.layers:
            x = layer.forward_packed(x, bounds, self.attention.kind == "blocks", self.onednn_linears)
        return x[:t]


def pool_cells(hidden: torch.Tensor, lengths: torch.Tensor, cls_present: bool, eos_present: bool) -> torch.Tensor:
    """Helical's ``emb_mode="cell"`` pooling, in fp32: mean over positions ``[start, length - end)``.

    ``start`` is 1 when the vocabulary has ``<cls>``; ``end`` is 1 more when it also has
    ``<eos>``. A cell with no position left gets NaN (as in Helical: 0 / 0).
    """
    start = 1 if cls_present else 0
    count = lengths - start - (1 if cls_present and eos_present else 0)
    pos = torch.arange(hidden.shape[1], device=hidden.device)
    keep = (pos >= start) & (pos < (start + count)[:, None])
    summed = torch.einsum("bs,bsh->bh", keep.float(), hidden.float())
    return summed / count[:, None].float()


def pool_packed(hidden: torch.Tensor, offsets: torch.Tensor, cls_present: bool, eos_present: bool) -> torch.Tensor:
    """:func:`pool_cells` for packed hidden states ``[tokens, hidden]``."""
    lengths = offsets[1:] - offsets[:-1]
    start = 1 if cls_present else 0
    count = lengths - start - (1 if cls_present and eos_present else 0)
    cell = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    pos = torch.arange(hidden.shape[0], device=hidden.device) - offsets[:-1][cell]
    keep = (pos >= start) & (pos < start + count[cell])
    summed = torch.zeros((len(lengths), hidden.shape[1]), dtype=torch.float32, device=hidden.device)
    summed.index_add_(0, cell[keep], hidden[keep].float())
    return summed / count[:, None].float()


def _read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights))
    return torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)


def _bert_key(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``state[name]`` with or without the ``bert.`` prefix, and old ``gamma``/``beta`` names."""
    candidates = [f"bert.{name}", name]
    if name.endswith(".weight"):
        candidates += [f"bert.{name[:-7]}.gamma", f"{name[:-7]}.gamma"]
    elif name.endswith(".bias"):
        candidates += [f"bert.{name[:-5]}.beta", f"{name[:-5]}.beta"]
    for key in candidates:
        if key in state:
            return state[key]
    raise KeyError(f"the weights have no tensor {name!r} (looked for {candidates})")


def load_encoder(
    model_dir: str | Path,
    *,
    emb_layer: int = -1,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    weights_file: str | None = None,
    attention: str = "auto",
    amx: bool = False,
    onednn_linears: bool | None = None,
) -> GeneformerEncoder:
    """Build the encoder from a Geneformer model folder (``config.json`` + weights).

    Parameters
    ----------
    model_dir : path
        The folder Helical loads with ``BertForMaskedLM.from_pretrained``.
    emb_layer : int, default -1
        Helical's ``emb_layer``; only :func:`layers_needed` layers are built and loaded.
    device : str or torch.device
    precision : {"fp32", "bf16", "fp16"}
        dtype of the weights and activations (layer norms compute in fp32).
    weights_file : str, optional
        ``model.safetensors`` or ``pytorch_model.bin``; default: whichever exists.
    attention : {"auto", "fused", "blocks"}, default "auto"
        How packed cells' attention runs on the CPU (:func:`choose_cpu_attention`; the
        choice is ``encoder.attention``). On CUDA, batches are padded and run in the fused kernel.
    amx : bool, default False
        Whether the CPU has AMX (the engine reads it from ``/proc/cpuinfo``), for ``auto``.
    onednn_linears : bool, optional
        Whether packed cells' linears run in oneDNN on the CPU (:func:`cpu_linear`); default:
        where :func:`onednn_linear_available` says it can (``encoder.onednn_linears``).

    Returns
    -------
    GeneformerEncoder
        In eval mode on ``device``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention {attention!r} is not one of {list(ATTENTION_KINDS)}")
    model_dir = Path(model_dir)
    cfg = EncoderConfig.from_json(model_dir / "config.json")
    n = layers_needed(emb_layer, cfg.num_hidden_layers)
    if weights_file is None:
        found = [f for f in ("model.safetensors", "pytorch_model.bin") if (model_dir / f).is_file()]
        if not found:
            raise FileNotFoundError(f"{str(model_dir)!r} holds neither model.safetensors nor pytorch_model.bin")
        weights_file = found[0]
    state = _read_state_dict(model_dir / weights_file)
    enc = GeneformerEncoder(cfg, n)
    own: dict[str, torch.Tensor] = {
        "word.weight": _bert_key(state, "embeddings.word_embeddings.weight"),
        "position.weight": _bert_key(state, "embeddings.position_embeddings.weight"),
        "token_type": _bert_key(state, "embeddings.token_type_embeddings.weight")[0],
        "norm.weight": _bert_key(state, "embeddings.LayerNorm.weight"),
        "norm.bias": _bert_key(state, "embeddings.LayerNorm.bias"),
    }
    for i in range(n):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            own[f"layers.{i}.qkv.{kind}"] = torch.cat(
                [_bert_key(state, f"{p}attention.self.{w}.{kind}") for w in ("query", "key", "value")]
            )
            own[f"layers.{i}.attn_out.{kind}"] = _bert_key(state, f"{p}attention.output.dense.{kind}")
            own[f"layers.{i}.attn_norm.{kind}"] = _bert_key(state, f"{p}attention.output.LayerNorm.{kind}")
            own[f"layers.{i}.ffn_in.{kind}"] = _bert_key(state, f"{p}intermediate.dense.{kind}")
            own[f"layers.{i}.ffn_out.{kind}"] = _bert_key(state, f"{p}output.dense.{kind}")
            own[f"layers.{i}.ffn_norm.{kind}"] = _bert_key(state, f"{p}output.LayerNorm.{kind}")
    enc.load_state_dict({k: v.float() for k, v in own.items()}, strict=True)
    del state
    dtype = PRECISIONS[precision]
    enc = enc.to(device)
    if dtype != torch.float32:
        # Linear and embedding weights in the compute dtype; layer-norm parameters stay fp32.
        for module in enc.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.to(dtype)
        enc.token_type = enc.token_type.to(dtype)
    if torch.device(device).type == "cpu":
        enc.attention = choose_cpu_attention(dtype, requested=attention, amx=amx)
        available = onednn_linear_available(dtype)
        enc.onednn_linears = available if onednn_linears is None else onednn_linears and available
    return enc.eval().requires_grad_(False)
