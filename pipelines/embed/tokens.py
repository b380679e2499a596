"""The tokenize step: every Zarr part of a dataset to rank-value tokens, stored in the lake per vocabulary.

``tokens/dataset_id=<id>/vocab=<hash>/part-<NNNNN>.parquet`` holds, for every cell of
the part in row order, its ``cell_id``, ``input_ids`` and ``length`` and the scalar obs
columns (``obs.<name>``) that the embedding files carry through
(``schemas/tokens.schema.json``). The folder is published atomically once every part is
written; a rerun after a crash keeps the parts already staged. Models whose vocabulary
hash is equal (same dictionaries, input size and framing) reuse the same files.

Parts are tokenised in parallel: on the given Dask client, else on the cluster at
``SCLAKE_DASK_ADDRESS`` when it is set, else in a pool of threads of this process
(``SCLAKE_DASK_WORKERS`` of them, at most one per core; NumPy's sort and SciPy's kernels
release the GIL). Each part is encoded a block of rows at a time, so memory does not follow the
part size nor the number of cells.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import formats
from pipelines.dask_cluster import cluster_or_threads
from pipelines.embed import writer
from pipelines.embed.tokenizer import TOKENIZER_VERSION, GenePlan, Tokens, Vocabulary, plan_genes, rank_value_encode
from pipelines.errors import InputError
from pipelines.lake import PATHS, Lake, part_name
from pipelines.logs import Progress, get_logger
from pipelines.part_blocks import iter_row_blocks, parallel_parts

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)

N_COUNTS_COLUMN = "n_counts"


@dataclass
class TokenizeResult:
    """What :func:`tokenize_dataset` did (a small, JSON-friendly manifest)."""

    dataset_id: str
    model: str
    vocab_hash: str
    prefix: str
    parts: int
    cells: int
    tokens: int
    reused: bool
    seconds: float
    genes_matched: int = 0
    collapse: bool = False
    parts_resumed: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cells_per_s(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 and not self.reused else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "cells_per_s": self.cells_per_s}


@dataclass(frozen=True)
class TokenPart:
    """One stored token part, read back: ids and offsets, cell ids, and the carried obs columns."""

    part: int
    cell_ids: pa.Array
    tokens: Tokens
    obs: pa.Table
    metadata: dict[str, str]

    def __len__(self) -> int:
        return len(self.tokens)


def vocabulary_for(settings: Settings, model: str) -> Vocabulary:
    """The vocabulary of ``model`` from its local files (dictionaries only; no weights are read)."""
    from pipelines.models import check_model_files

    return Vocabulary.from_model_files(check_model_files(settings, model, verify=False))


def _part_obs(ds: Any, part: int) -> tuple[np.ndarray, dict[str, pa.Array], np.ndarray | None]:
    """Part ``part``'s cell ids, its obs columns carried into the embeddings, and its
    ``n_counts`` column (Helical normalises by it when the data has one), else ``None``.

    Read with :mod:`pipelines.frames`; a frame it cannot read is read with anndata.
    """
    from pipelines import frames

    try:
        index, columns = frames.read_frame(ds.part_group(part)["obs"])
    except frames.Unsupported as e:
        log.info("obs of part %d read with anndata (%s)", part, e)
        obs = ds.obs_part(part)
        n_counts = np.asarray(obs[N_COUNTS_COLUMN].to_numpy()) if N_COUNTS_COLUMN in obs.columns else None
        return np.asarray(obs.index.astype(str), dtype=object), writer.obs_columns(obs), n_counts
    n_counts = columns.get(N_COUNTS_COLUMN)
    if n_counts is not None:
        n_counts = n_counts.to_numpy(zero_copy_only=False)
    return index.to_numpy(zero_copy_only=False), writer.scalar_columns(columns), n_counts


def tokenize_part(
    settings: Settings, dataset_id: str, part: int, plan: GenePlan, vocab: Vocabulary, stage: str
) -> dict[str, Any]:
    """Tokenise Zarr part ``part`` and write it into the staging folder ``stage`` (a Dask task).

    The counts are read and encoded a block of rows at a time (:mod:`pipelines.part_blocks`;
    each cell's tokens depend on its own row only), and each block becomes a row group of the
    part's Parquet file, so that the task holds one block's temporaries and the part's
    compressed output rather than the whole part's encoding.
    """
    from pipelines.dataset import Dataset

    started = time.perf_counter()
    lake = Lake(settings)
    ds = Dataset(lake.url(PATHS.zarr(dataset_id)), lake.storage_options)
    cell_ids, carried, n_counts = _part_obs(ds, part)
    meta = {
        "dataset_id": dataset_id,
        "part": part,
        "vocab_hash": vocab.hash,
        "tokenizer_version": TOKENIZER_VERSION,
        "input_size": vocab.input_size,
        "special_token": vocab.special_token,
        "n_counts_source": "obs/n_counts" if n_counts is not None else "row sums",
        "sclake_version": writer.package_version("sclake"),
    }
    buf = io.BytesIO()
    out: pq.ParquetWriter | None = None
    cells = tokens = 0
    for first, x in iter_row_blocks(ds, part):
        rows = slice(first, first + x.shape[0])
        toks = rank_value_encode(x, plan, vocab, None if n_counts is None else n_counts[rows])
        obs_rows = {k: v.slice(first, x.shape[0]) for k, v in carried.items()}
        table = writer.tokens_table(cell_ids[rows], toks.ids, toks.offsets, obs_rows, meta)
        if out is None:
            strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
            compression = writer.load_schema("embeddings")["compression"]
            out = pq.ParquetWriter(buf, table.schema, compression=compression, use_dictionary=strings)
        out.write_table(table)
        cells += len(toks)
        tokens += int(toks.offsets[-1])
    if out is not None:
        out.close()
    record = lake.put_atomic(f"{stage}/{part_name(part)}.parquet", buf.getvalue())
    return {**record, "part": part, "cells": cells, "tokens": tokens, "seconds": time.perf_counter() - started}


def read_token_part(lake: Lake, rel: str) -> TokenPart:
    """Read a token part written by :func:`tokenize_part`."""
    with lake.open(rel, "rb") as f:
        table = pq.read_table(f)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    formats.check("tokens", meta, repr(lake.url(rel)))
    ids_col = table.column("input_ids").combine_chunks()
    offsets = np.asarray(ids_col.offsets, dtype=np.int64)
    ids = np.asarray(ids_col.values, dtype=np.int32)
    if offsets[0] != 0:  # a sliced array: rebase
        ids, offsets = ids[offsets[0] : offsets[-1]], offsets - offsets[0]
    obs_names = [n for n in table.column_names if n.startswith(writer.OBS_PREFIX)]
    return TokenPart(
        part=int(meta.get("part", -1)),
        cell_ids=table.column("cell_id").combine_chunks(),
        tokens=Tokens(ids, offsets),
        obs=table.select(obs_names),
        metadata=meta,
    )


def _staged_ok(lake: Lake, stage: str, vocab_hash: str) -> dict[int, dict[str, Any]]:
    done = {}
    for rel, meta, rows in writer.staged_metadata(lake, stage, "tokens"):
        if meta.get("vocab_hash") == vocab_hash:
            done[int(meta["part"])] = {"path": rel, "cells": rows}
    return done


def _run(tasks: list[tuple], client: Any, progress: Progress, threads: int) -> list[dict[str, Any]]:
    if not tasks:
        return []
    out = []
    if client is not None:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = [
            client.submit(tokenize_part, *t, pure=False, retries=1, key=f"sclake-tokenize-{token}-{t[2]:05d}")
            for t in tasks
        ]
        for fut in as_completed(futures, loop=client.loop):
            rec = fut.result()
            out.append(rec)
            progress.advance(rec["cells"])
        return out
    # A thread pool rather than dask.delayed: dask would walk the vocabulary and gene plan of
    # every task looking for collections (seconds for one small part).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(tasks), threads)) as pool:
        for rec in pool.map(lambda t: tokenize_part(*t), tasks):
            out.append(rec)
            progress.advance(rec["cells"])
    return out


def tokenize_dataset(settings: Settings, dataset_id: str, model: str, *, client: Any = None) -> TokenizeResult:
    """Tokenise every part of ``dataset_id`` for ``model``'s vocabulary and publish the tokens.

    Parameters
    ----------
    settings : Settings
    dataset_id : str
        A dataset in the lake (``sclake ingest`` prints it).
    model : str
        A model with local files; models sharing its vocabulary reuse the result.
    client : distributed.Client, optional
        Run the parts on this cluster; default: the cluster at ``SCLAKE_DASK_ADDRESS`` when set,
        else a pool of threads in this process.

    Returns
    -------
    TokenizeResult
        ``reused=True`` when the tokens were already published.

    Raises
    ------
    InputError
        The dataset has no Ensembl gene ids, or none of its genes is in the vocabulary.
    """
    from pipelines.dataset import open_dataset

    started = time.perf_counter()
    lake = Lake(settings)
    vocab = vocabulary_for(settings, model)
    final = PATHS.tokens(dataset_id, vocab.hash)
    if lake.is_published(final):
        return _reused(lake, final, dataset_id, model, vocab.hash, started)
    ds = open_dataset(lake, dataset_id)
    plan = _gene_plan(ds, dataset_id, model, vocab)
    # Staged resumably, and committed with the totals, which are known only at the end.
    stage = lake.open_stage(final)
    done = _staged_ok(lake, stage, vocab.hash)
    todo = [p.index for p in ds.parts if p.index not in done]
    progress = Progress(f"tokenize {dataset_id}", total=ds.n_obs, unit="cells", logger=log)
    progress.advance(sum(int(d["cells"]) for d in done.values()))
    tasks = [(settings, dataset_id, p, plan, vocab, stage) for p in todo]
    with cluster_or_threads(settings, client, parts=len(tasks)) as cluster:
        records = _run(tasks, cluster, progress, parallel_parts(settings))
    progress.finish()
    tokens = sum(r["tokens"] for r in records)
    for p, d in done.items():
        found = read_token_part(lake, d["path"])
        tokens += int(found.tokens.offsets[-1])
        records.append({"part": p, "cells": d["cells"], "path": d["path"]})
    cells = sum(int(r["cells"]) for r in records)
    info = {
        **writer.encoding("tokens"),
        "dataset_id": dataset_id,
        "vocab_hash": vocab.hash,
        "tokenizer_version": TOKENIZER_VERSION,
        "model": model,
        "parts": len(ds.parts),
        "cells": cells,
        "tokens": tokens,
        "genes_matched": plan.n_genes,
        "collapse": plan.collapse,
    }
    if not lake.commit(stage, final, info, exist_ok=True):
        log.info("tokens %s were published meanwhile by another run; using them", lake.url(final))
    seconds = time.perf_counter() - started
    log.info("tokenized %s cells of %s into %s in %.1fs", f"{cells:,}", dataset_id, lake.url(final), seconds)
    return TokenizeResult(
        dataset_id=dataset_id,
        model=model,
        vocab_hash=vocab.hash,
        prefix=lake.url(final),
        parts=len(ds.parts),
        cells=cells,
        tokens=tokens,
        reused=False,
        seconds=seconds,
        genes_matched=plan.n_genes,
        collapse=plan.collapse,
        parts_resumed=len(done),
        files=_files(records, dataset_id, vocab.hash),
    )


def _reused(lake: Lake, final: str, dataset_id: str, model: str, vocab_hash: str, started: float) -> TokenizeResult:
    """The result of a run that found the tokens published (from the commit marker)."""
    info = lake.commit_info(final)
    return TokenizeResult(
        dataset_id=dataset_id,
        model=model,
        vocab_hash=vocab_hash,
        prefix=lake.url(final),
        parts=int(info.get("parts", 0)),
        cells=int(info.get("cells", 0)),
        tokens=int(info.get("tokens", 0)),
        reused=True,
        seconds=time.perf_counter() - started,
        genes_matched=int(info.get("genes_matched", 0)),
        collapse=bool(info.get("collapse", False)),
    )


def _gene_plan(ds: Any, dataset_id: str, model: str, vocab: Vocabulary) -> GenePlan:
    """Which genes of the dataset the vocabulary holds; :class:`InputError` when none can be used."""
    if ds.gene_ids is None:
        raise InputError(
            f"dataset {dataset_id} has no Ensembl gene ids (var index and columns hold none)",
            "Geneformer needs Ensembl ids (ENSG...) in var: upload a file with them in the var index or a column",
            code="no_ensembl_ids",
        )
    plan = plan_genes(list(ds.gene_ids), vocab)
    if plan.n_genes == 0:
        raise InputError(
            f"none of the {ds.n_vars:,} genes of dataset {dataset_id} is in the vocabulary of {model!r}",
            "check that var holds human Ensembl gene ids",
            code="no_vocabulary_genes",
        )
    log.info(
        "tokenize %s for %s (vocabulary %s): %d of %d genes in the vocabulary%s, %d parts",
        dataset_id,
        model,
        vocab.hash,
        plan.n_genes,
        ds.n_vars,
        " (ids collapsed through the mapping dictionary)" if plan.collapse else "",
        len(ds.parts),
    )
    return plan


def _files(records: list[dict[str, Any]], dataset_id: str, vocab_hash: str) -> list[dict[str, Any]]:
    """One record per published token part (its final path, and bytes and sha256 where this run wrote it)."""
    return sorted(
        (
            {
                **{k: r[k] for k in ("bytes", "sha256") if k in r},
                "path": PATHS.token_part(dataset_id, vocab_hash, r["part"]),
            }
            for r in records
        ),
        key=lambda r: r["path"],
    )
