"""The inference loop: token parts in, one embeddings Parquet per part out, streamed.

:class:`Embedder` turns the token sequences of one part into cell embeddings: it sorts the
cells into length buckets under the token budget, pads each batch (pinned host memory and
non-blocking copies on CUDA), runs the encoder under ``torch.inference_mode``, pools,
keeps the results on the device until the part is done and puts them back in row order.

:func:`run_parts` streams several parts through one :class:`Embedder`: a reader thread
loads the next token parts while the device computes (``prefetch`` parts ahead), and a
writer thread writes each finished part to the staging folder of the output, so reading,
computing and writing overlap. Memory held at once: the encoder, at most ``prefetch + 2``
token parts and one batch of activations, whatever the size of the dataset.

This module needs torch, NumPy and pyarrow (the lake I/O), not anndata or Helical.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.embed.batching import pad_batch, plan_batches
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import torch

    from pipelines.embed.tokens import TokenPart
    from pipelines.settings import Settings

log = get_logger(__name__)

_DONE = object()


@dataclass(frozen=True)
class EngineOptions:
    """How to run the encoder.

    Attributes
    ----------
    device : str
        ``cpu``, ``cuda`` or ``cuda:<i>``.
    precision : str
        ``fp32``, ``bf16`` or ``fp16``.
    token_budget : int
        Padded tokens per forward batch.
    emb_layer : int
        Helical's ``emb_layer`` (-1: the last layer).
    prefetch : int
        Token parts read ahead of the one being computed.
    threads : int, optional
        torch intra-op threads on CPU (default: leave torch's setting).
    max_cells : int, optional
        Cells per batch at most.
    memory_cap_bytes : int, optional
        The profile's host memory cap: a warning is logged when the process's peak RSS passes it.
    attention : {"auto", "fused", "blocks"}
        How attention runs on the CPU (``SCLAKE_CPU_ATTENTION``; ``auto``:
        :func:`pipelines.embed.encoder.choose_cpu_attention` with this CPU's AMX flags).
    """

    device: str = "cpu"
    precision: str = "fp32"
    token_budget: int = 16384
    emb_layer: int = -1
    prefetch: int = 1
    threads: int | None = None
    max_cells: int | None = None
    memory_cap_bytes: int | None = None
    attention: str = "auto"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class PartStats:
    """Counters of one part (or of a whole run, summed)."""

    cells: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0

    def add(self, other: PartStats) -> None:
        for name in ("cells", "tokens", "padded_tokens", "batches", "read_s", "compute_s", "write_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Embedder:
    """An encoder on a device with Helical's ``emb_mode="cell"`` pooling.

    Parameters
    ----------
    model_dir : path
        Folder with ``config.json`` and the weights.
    cls_present, eos_present : bool
        Whether the vocabulary has ``<cls>`` / ``<eos>`` (excluded from the mean, as in Helical).
    pad_id : int
        Token id of ``<pad>``.
    options : EngineOptions
    """

    def __init__(self, model_dir: Any, *, cls_present: bool, eos_present: bool, pad_id: int, options: EngineOptions):
        import torch

        from pipelines.embed.encoder import load_encoder

        self.options = options
        if options.threads and not options.is_cuda:
            torch.set_num_threads(int(options.threads))
        self.device = torch.device(options.device)
        amx = False
        if not options.is_cuda and options.attention == "auto":
            from pipelines.profiles import cpu_has_amx

            amx = cpu_has_amx()
        self.encoder = load_encoder(
            model_dir,
            emb_layer=options.emb_layer,
            device=self.device,
            precision=options.precision,
            attention=options.attention,
            amx=amx,
        )
        if not options.is_cuda:
            log.info(
                "attention on the CPU in %s: %s; linears in %s",
                options.precision,
                self.encoder.attention.reason,
                "oneDNN, bias added in the product" if self.encoder.onednn_linears else "F.linear",
            )
        self.cls_present, self.eos_present, self.pad_id = cls_present, eos_present, pad_id
        self.width = self.encoder.width
        self.pinned_batches = 0  # batches copied to the device from page-locked memory

    def _pooled_counts(self, lengths: np.ndarray) -> np.ndarray:
        start = 1 if self.cls_present else 0
        return lengths - start - (1 if self.cls_present and self.eos_present else 0)

    def embed(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        stats: PartStats | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings ``(n_cells, width)`` float32 of the cells ``ids[offsets[i]:offsets[i+1]]``, in order.

        A cell with no gene token gets NaN (Helical divides 0 by 0 there).
        """
        import torch

        from pipelines.embed.encoder import pool_cells, pool_packed
        from pipelines.embed.tokenizer import Tokens

        lengths = np.diff(offsets).astype(np.int64)
        out = np.full((len(lengths), self.width), np.nan, dtype=np.float32)
        valid = np.flatnonzero(self._pooled_counts(lengths) > 0)
        if len(valid) == 0:
            return out
        batches = plan_batches(
            lengths[valid],
            self.options.token_budget,
            max_cells=self.options.max_cells,
            pad_multiple=8 if self.options.is_cuda else 1,
        )
        cuda = self.options.is_cuda
        results: list[torch.Tensor] = []
        order: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in batches:
                rows = valid[batch.rows]
                if cuda:
                    # Padded batch (cells of nearly one length) with a key mask: large, regular kernels.
                    host_ids = torch.from_numpy(pad_batch(ids, offsets, rows, batch.width, self.pad_id))
                    host_len = torch.from_numpy(lengths[rows]).pin_memory()
                    host_ids = host_ids.pin_memory()
                    self.pinned_batches += int(host_ids.is_pinned())
                    dev_ids = host_ids.to(self.device, non_blocking=True)
                    dev_len = host_len.to(self.device, non_blocking=True)
                    padded = bool(lengths[rows].min() < batch.width)
                    hidden = self.encoder(dev_ids, dev_len, padded=padded)
                    results.append(pool_cells(hidden, dev_len, self.cls_present, self.eos_present))
                else:
                    # Packed cells: no padding computed, attention per cell without a mask.
                    packed = Tokens(ids, offsets).take(rows)
                    cell_offsets = torch.from_numpy(packed.offsets)
                    hidden = self.encoder.forward_packed(torch.from_numpy(packed.ids), cell_offsets)
                    results.append(pool_packed(hidden, cell_offsets, self.cls_present, self.eos_present))
                order.append(rows)
                if on_batch is not None:
                    on_batch(len(rows))
                if stats is not None:
                    stats.batches += 1
                    stats.padded_tokens += batch.tokens if cuda else int(lengths[rows].sum())
            pooled = torch.cat(results).float().cpu().numpy()  # one device sync per part
        out[np.concatenate(order)] = pooled
        if stats is not None:
            stats.tokens += int(lengths[valid].sum())
        return out


@lru_cache(maxsize=2)
def cached_embedder(model_dir: str, cls_present: bool, eos_present: bool, pad_id: int, options: EngineOptions):
    """One :class:`Embedder` per process and configuration (Dask workers keep it between tasks)."""
    return Embedder(model_dir, cls_present=cls_present, eos_present=eos_present, pad_id=pad_id, options=options)


@dataclass(frozen=True)
class EmbedJob:
    """Everything a worker needs to embed parts of one dataset with one model (small, picklable)."""

    settings: Settings
    dataset_id: str
    model: str
    model_dir: str
    tokens_prefix: str  # lake path of the published tokens
    stage: str  # lake path of the embeddings staging folder
    cls_present: bool
    eos_present: bool
    pad_id: int
    options: EngineOptions
    metadata: dict[str, Any] = field(default_factory=dict)


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rows_hash(rows: np.ndarray | None) -> str:
    """Fingerprint of the rows embedded from a part (``all`` for every row), kept in the part's metadata."""
    if rows is None:
        return "all"
    import hashlib

    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _select(part: TokenPart, keep: np.ndarray | None) -> tuple[Any, Any, Any, np.ndarray]:
    """Cell ids, obs, token ids and offsets of the kept rows of a part."""
    if keep is None:
        return part.cell_ids, part.obs, part.tokens.ids, part.tokens.offsets
    keep = np.asarray(keep, dtype=np.int64)
    if len(keep) and (keep.min() < 0 or keep.max() >= len(part)):
        raise IndexError(f"kept rows of part {part.part} fall outside its {len(part)} cells")
    sub = part.tokens.take(keep)
    return part.cell_ids.take(keep), part.obs.take(keep), sub.ids, sub.offsets


def run_parts(
    job: EmbedJob, parts: list[int], keep: dict[int, np.ndarray] | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Embed ``parts`` of the job's dataset and write them into the staging folder (a Dask task or in-process).

    Parameters
    ----------
    job : EmbedJob
    parts : list of int
        Part indices, processed in this order.
    keep : dict, optional
        Rows to embed per part (sorted indices within the part); default: every row.
    progress : bool, default False
        Log progress lines (cells done, cells/s) as batches complete.

    Returns
    -------
    dict
        ``files`` (one record per part: path, rows, bytes, sha256), ``stats`` (summed
        :class:`PartStats` fields), ``peak_rss_bytes`` and ``gpu_peak_memory_bytes`` of
        this process, ``device``, ``attention`` (``fused`` or ``blocks``).
    """
    from pipelines.lake import Lake
    from pipelines.logs import Progress

    lake = Lake(job.settings)
    total_cells = None if keep is None else sum(len(keep[p]) for p in parts)
    meter = Progress(f"embed {job.dataset_id} {job.model}", total=total_cells, logger=log) if progress else None
    embedder = cached_embedder(job.model_dir, job.cls_present, job.eos_present, job.pad_id, job.options)
    gpu = None
    if job.options.is_cuda:
        import torch

        gpu = torch.cuda
        gpu.reset_peak_memory_stats(embedder.device)
    total = PartStats()
    files: list[dict[str, Any]] = []
    flow = _Flow(job.options.prefetch)
    reader_thread = flow.thread("sclake-embed-reader", _read_parts, flow, lake, job, parts)
    writer_thread = flow.thread("sclake-embed-writer", _write_parts, flow, lake, job, files, total)
    finished = False
    over_cap = False
    try:
        while (item := flow.get(flow.inbox)) is not _DONE:
            p, tp, read_s = item
            table, stats = _embed_part(embedder, job, tp, None if keep is None else keep.get(p), read_s, meter)
            del tp
            if not over_cap:
                over_cap = _warn_over_cap(job.options.memory_cap_bytes, p)
            if not flow.put(flow.outbox, (p, table, stats)):
                break
        finished = not flow.stop.is_set()
    finally:
        if finished:
            flow.put(flow.outbox, _DONE)  # the writer finishes what is queued, then stops
            writer_thread.join()
        flow.stop.set()
        reader_thread.join(timeout=60)
        writer_thread.join(timeout=60)
    if flow.errors:
        raise flow.errors[0]
    if meter is not None:
        meter.finish()
    return {
        "files": sorted(files, key=lambda f: f["part"]),
        "stats": total.__dict__,
        "peak_rss_bytes": _peak_rss(),
        "gpu_peak_memory_bytes": int(gpu.max_memory_allocated(embedder.device)) if gpu is not None else None,
        "device": str(embedder.device),
        "attention": embedder.encoder.attention.kind,
        "pid": os.getpid(),
    }


class _Flow:
    """The queues between the reader thread, the computing thread and the writer thread of one run.

    An error in a thread is kept for the computing thread to raise and stops the run:
    every ``put``/``get`` gives up once ``stop`` is set.
    """

    def __init__(self, prefetch: int) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.inbox: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.outbox: queue.Queue = queue.Queue(maxsize=1)

    def put(self, q: queue.Queue, item: Any) -> bool:
        """Put unless the run is stopping; ``False`` when it is."""
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                q.put(item, timeout=0.2)
                return True
        return False

    def get(self, q: queue.Queue) -> Any:
        """The next item, or ``_DONE`` once the run is stopping."""
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.2)
        return _DONE

    def thread(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Start ``target(*args)`` in a daemon thread whose error stops the run."""

        def body() -> None:
            try:
                target(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self.errors.append(e)
                self.stop.set()

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t


def _read_parts(flow: _Flow, lake: Any, job: EmbedJob, parts: list[int]) -> None:
    """Reader thread: the token parts, in order, into ``flow.inbox`` (then ``_DONE``)."""
    from pipelines.embed.tokens import read_token_part
    from pipelines.lake import part_name

    for p in parts:
        t0 = time.perf_counter()
        tp = read_token_part(lake, f"{job.tokens_prefix}/{part_name(p)}.parquet")
        if tp.part != p:
            raise ValueError(f"token file of part {p} says it holds part {tp.part}")
        if not flow.put(flow.inbox, (p, tp, time.perf_counter() - t0)):
            return
    flow.put(flow.inbox, _DONE)


def _embed_part(
    embedder: Embedder, job: EmbedJob, tp: TokenPart, rows: np.ndarray | None, read_s: float, meter: Any
) -> tuple[Any, PartStats]:
    """The embeddings table of the kept ``rows`` of one token part, and the part's counters."""
    from pipelines.embed import writer

    stats = PartStats(read_s=read_s)
    cell_ids, obs, ids, offsets = _select(tp, rows)
    t0 = time.perf_counter()
    emb = embedder.embed(ids, offsets, stats, on_batch=meter.advance if meter else None)
    stats.compute_s = time.perf_counter() - t0
    stats.cells = len(offsets) - 1
    meta = {**job.metadata, "part": tp.part, "rows_hash": rows_hash(rows)}
    return writer.embeddings_table(cell_ids, emb, obs, meta), stats


def _warn_over_cap(cap: int | None, part: int) -> bool:
    """Whether the peak RSS passed the profile's host memory cap (then logged as a warning)."""
    if not cap or _peak_rss() <= cap:
        return False
    log.warning(
        "peak RSS %.2f GiB passed the profile's host memory cap %.2f GiB (part %d); "
        "lower the token budget or the part size",
        _peak_rss() / 2**30,
        cap / 2**30,
        part,
    )
    return True


def _write_parts(flow: _Flow, lake: Any, job: EmbedJob, files: list[dict[str, Any]], total: PartStats) -> None:
    """Writer thread: each finished part from ``flow.outbox`` to the staging folder, in one piece."""
    from pipelines.embed import writer
    from pipelines.lake import part_name

    while (item := flow.get(flow.outbox)) is not _DONE:
        p, table, stats = item
        t0 = time.perf_counter()
        rel = f"{job.stage}/{part_name(p)}.parquet"
        record = lake.put_atomic(rel, writer.parquet_bytes(table))
        stats.write_s = time.perf_counter() - t0
        files.append({**record, "part": p, "rows": table.num_rows})
        total.add(stats)
        log.info(
            "part %d: %d cells, %.2f cells/s (read %.1fs, compute %.1fs, write %.1fs)",
            p,
            stats.cells,
            stats.cells / stats.compute_s if stats.compute_s else 0.0,
            stats.read_s,
            stats.compute_s,
            stats.write_s,
        )
