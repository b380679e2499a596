"""``embed_dataset``: tokens to published, hive-partitioned embedding Parquet for one (dataset, model).

The step resolves the device and precision from the model's resource profile, makes
sure the dataset's tokens for the model's vocabulary exist (:func:`tokenize_dataset`),
picks the cells that passed validation, and streams the parts through the engine:
in this process when no Dask cluster is configured (every core through torch's threads),
else over the cluster's workers (one task per worker or per GPU, ``resources={"GPU": 1}``
on GPU clusters, torch threads sized so that the workers of a host share its cores).

Each part is written to the staging folder of
``embeddings/model=<m>/dataset_id=<id>/`` as soon as it is done; the folder is committed
(``_SUCCESS`` holding the run's manifest) when every part is there. A run that crashed
resumes: parts already staged with the same model, vocabulary, layer and precision are
kept. A published output is never recomputed.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.embed import writer
from pipelines.embed.engine import EmbedJob, EngineOptions, rows_hash, run_parts
from pipelines.embed.tokenizer import TOKENIZER_VERSION
from pipelines.embed.tokens import tokenize_dataset, vocabulary_for
from pipelines.errors import ConfigError, LakeError
from pipelines.lake import PATHS, Lake, check_dataset_id, check_model_name, part_name
from pipelines.logs import get_logger

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)


@dataclass
class EmbedResult:
    """What :func:`embed_dataset` did (``summary()`` is the JSON manifest steps pass on)."""

    dataset_id: str
    model: str
    rows: int
    parts: int
    prefix: str
    device: str
    precision: str
    width: int
    cells_per_s: float = 0.0
    tokens_per_s: float = 0.0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    gpu_peak_memory_bytes: int | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    parts_resumed: int = 0
    vocab_hash: str = ""
    token_budget: int = 0
    emb_layer: int = -1
    synthetic: bool | None = None
    workers: int = 1

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str | None) -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>``; ``None``/``auto``: CUDA when available, else CPU."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "gpu":
        d = "cuda"
    if d != "cpu" and not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
        raise ConfigError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no CUDA device here; use --device cpu")
    return d


def bf16_supported(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 at full speed (CUDA: Ampere or later; CPU: AVX512-BF16/AMX)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def kept_rows(lake: Lake, dataset_id: str, n_parts: int) -> dict[int, np.ndarray] | None:
    """Rows per part that passed validation; ``None`` (every row) when the dataset was not validated.

    Raises
    ------
    LakeError
        The dataset failed validation.
    """
    from pipelines.validate.report import read_summary, validated_cells

    if read_summary(lake, dataset_id) is None:
        log.warning("dataset %s has not been validated: every cell is embedded", dataset_id)
        return None
    keep = validated_cells(lake, dataset_id)
    return {p: keep.get(p, np.zeros(0, dtype=np.int64)) for p in range(n_parts)}


def _staged(
    lake: Lake, stage: str, expect: dict[str, str], rows: dict[int, int], hashes: dict[int, str]
) -> dict[int, dict[str, Any]]:
    """Parts already in the staging folder that were made the same way and hold the expected rows."""
    done = {}
    for rel in lake.staged_parts(stage):
        found = writer.read_metadata(lake, rel)
        if found is None:
            continue
        meta, n = found
        try:
            part = int(meta["part"])
        except (KeyError, ValueError):
            continue
        same = all(meta.get(k) == v for k, v in expect.items()) and meta.get("rows_hash") == hashes.get(part)
        if same and rows.get(part) == n:
            done[part] = {"path": rel, "rows": n, "part": part}
    return done


def _published_result(lake: Lake, dataset_id: str, model: str, final: str, started: float) -> EmbedResult:
    info = lake.commit_info(final)
    return EmbedResult(
        dataset_id=dataset_id,
        model=model,
        rows=int(info.get("rows", 0)),
        parts=int(info.get("parts", 0)),
        prefix=lake.url(final),
        device=str(info.get("device", "")),
        precision=str(info.get("precision", "")),
        width=int(info.get("width", 0)),
        seconds=time.perf_counter() - started,
        files=list(info.get("files", [])),
        reused=True,
        vocab_hash=str(info.get("vocab_hash", "")),
        emb_layer=int(info.get("emb_layer", -1)),
        synthetic=info.get("synthetic"),
    )


def _distribute(client: Any, job: EmbedJob, todo: list[int], keep: Any, resources: dict[str, float]) -> list[dict]:
    """One engine task per worker (or per GPU), parts dealt round-robin."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if resources:
        slots = [
            a for a, w in workers.items() if all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
        ]
        if not slots:
            raise ConfigError(
                f"no Dask worker offers the resources {resources} the profile asks for "
                "(start GPU workers with `dask worker --resources GPU=1`) or use --device cpu"
            )
    else:
        slots = list(workers)
    n_tasks = max(1, min(len(slots), len(todo)))
    groups = [todo[i::n_tasks] for i in range(n_tasks)]
    cores = client.run(cpu_cores)
    per_host: dict[str, int] = {}
    for a in slots[:n_tasks]:
        per_host[workers[a]["host"]] = per_host.get(workers[a]["host"], 0) + 1
    token = uuid.uuid4().hex[:8]  # task keys only: a rerun never meets an old result
    futures = []
    for addr, group in zip(slots[:n_tasks], groups, strict=True):
        threads = max(1, int(cores.get(addr, 1)) // per_host[workers[addr]["host"]])
        task_job = replace(job, options=replace(job.options, threads=None if resources else threads))
        sub = None if keep is None else {p: keep[p] for p in group}
        futures.append(
            client.submit(
                run_parts,
                task_job,
                group,
                sub,
                resources=resources or None,
                workers=None if resources else [addr],
                allow_other_workers=True,
                pure=False,
                retries=1,
                key=f"sclake-embed-{job.dataset_id}-{job.model}-{token}-{group[0]:05d}",
            )
        )
    log.info("embedding %d parts with %d Dask tasks%s", len(todo), n_tasks, f" ({resources})" if resources else "")
    return client.gather(futures)


def embed_dataset(
    settings: Settings,
    dataset_id: str,
    model: str,
    *,
    device: str | None = None,
    precision: str | None = None,
    client: Any = None,
    progress: bool = True,
    keep: dict[int, np.ndarray] | None = None,
    emb_layer: int = -1,
    token_budget: int | None = None,
) -> EmbedResult:
    """Embed every validated cell of ``dataset_id`` with ``model`` and publish the Parquet parts.

    Parameters
    ----------
    settings : Settings
    dataset_id : str
    model : str
        A model with local files (``sclake models synthesize NAME`` writes synthetic ones).
    device : str, optional
        ``auto`` (default: CUDA when available), ``cpu``, ``cuda``, ``cuda:<i>``.
    precision : str, optional
        ``fp32``, ``bf16`` or ``fp16``; default: the profile's choice for the device.
    client : distributed.Client, optional
        Run the parts on this Dask cluster; default: the cluster at ``SCLAKE_DASK_ADDRESS``
        when set, else this process.
    progress : bool, default True
        Log progress lines.
    keep : dict, optional
        Rows to embed per part (sorted row indices within each part; a part not named keeps
        none); default: the cells that passed validation (``validated_cells``), every cell
        when the dataset was not validated.
    emb_layer : int, default -1
        Helical's ``emb_layer``.
    token_budget : int, optional
        Padded tokens per batch; default: the profile's for the device.

    Returns
    -------
    EmbedResult

    Raises
    ------
    ConfigError
        Unknown model or profile, device or precision not available.
    ModelFilesError
        The model's files are missing or altered.
    LakeError
        The dataset is not in the lake or failed validation.
    """
    from pipelines.embed.encoder import layers_needed
    from pipelines.models import check_model_files, read_manifest
    from pipelines.profiles import get_profile
    from pipelines.usage import ResourceMonitor

    started = time.perf_counter()
    check_dataset_id(dataset_id)
    check_model_name(model)
    lake = Lake(settings)
    final = PATHS.embeddings(model, dataset_id)
    if lake.is_published(final):
        log.info("embeddings of %s with %s are already published at %s", dataset_id, model, lake.url(final))
        return _published_result(lake, dataset_id, model, final, started)
    if not lake.is_published(PATHS.zarr(dataset_id)):
        raise LakeError(f"dataset {dataset_id!r} is not in the lake {lake.uri!r}; run `sclake ingest` first")
    profile = get_profile(model)
    files = check_model_files(settings, model)
    dev = resolve_device(device)
    prec = profile.resolve_precision(dev, precision, bf16_supported=bf16_supported(dev))
    budget = int(token_budget or profile.token_budget_for(dev))
    width, n_layers = _architecture(files)
    try:
        layers_needed(emb_layer, n_layers)
    except ValueError as e:
        raise ConfigError(f"model {model!r}: {e}") from None
    manifest = read_manifest(files) or {}
    monitor = ResourceMonitor()
    monitor.start()

    t0 = time.perf_counter()
    tok = tokenize_dataset(settings, dataset_id, model, client=client)
    tokenize_s = time.perf_counter() - t0
    vocab = vocabulary_for(settings, model)
    n_parts = tok.parts
    if keep is None:
        keep = kept_rows(lake, dataset_id, n_parts)
    else:  # parts not named keep no cell
        keep = {p: np.asarray(keep.get(p, ()), dtype=np.int64) for p in range(n_parts)}
    expected_rows = {
        p: int(len(keep[p])) if keep is not None else _part_cells(lake, dataset_id, vocab.hash, p)
        for p in range(n_parts)
    }
    metadata = {
        "dataset_id": dataset_id,
        "model": model,
        "model_version": files.version,
        "synthetic": bool(manifest.get("synthetic", False)),
        "emb_mode": "cell",
        "emb_layer": emb_layer,
        "precision": prec,
        "device": dev,
        "tokenizer_version": TOKENIZER_VERSION,
        "vocab_hash": vocab.hash,
        "sclake_version": writer.package_version("sclake"),
        "torch_version": writer.package_version("torch"),
    }
    same_run = {
        "encoding-version": writer.encoding("embeddings")["encoding-version"],
        "model": model,
        "vocab_hash": vocab.hash,
        "precision": prec,
        "emb_layer": str(emb_layer),
    }
    stage = lake.open_stage(final)
    hashes = {p: rows_hash(None if keep is None else keep[p]) for p in range(n_parts)}
    done = _staged(lake, stage, same_run, expected_rows, hashes)
    todo = [p for p in range(n_parts) if p not in done]
    if done:
        log.info("resuming: %d of %d parts already staged", len(done), n_parts)
    job = EmbedJob(
        settings=settings,
        dataset_id=dataset_id,
        model=model,
        model_dir=str(files.model_dir),
        tokens_prefix=PATHS.tokens(dataset_id, vocab.hash),
        stage=stage,
        cls_present="<cls>" in vocab.token_dictionary,
        eos_present="<eos>" in vocab.token_dictionary,
        pad_id=vocab.pad_id,
        options=EngineOptions(
            device=dev,
            precision=prec,
            token_budget=budget,
            emb_layer=emb_layer,
            memory_cap_bytes=int(profile.host_memory),
        ),
        metadata=metadata,
    )
    t0 = time.perf_counter()
    outputs: list[dict[str, Any]] = []
    n_workers = 1
    if todo:
        remote = client
        if remote is None and settings.dask_address:
            from pipelines.dask_cluster import dask_client

            with dask_client(settings) as remote:
                outputs = _distribute(remote, job, todo, keep, profile.dask_resources_for(dev))
        elif remote is not None:
            outputs = _distribute(remote, job, todo, keep, profile.dask_resources_for(dev))
        else:
            in_process = replace(job, options=replace(job.options, threads=cpu_cores()))
            log.info(
                "embedding %d parts of %s with %s on %s (%s) in this process", len(todo), dataset_id, model, dev, prec
            )
            outputs = [run_parts(in_process, todo, keep, progress=progress)]
        n_workers = len(outputs)
    embed_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    records = [f for out in outputs for f in out["files"]]
    for d in done.values():
        records.append({**d, "bytes": lake.size(d["path"]), "sha256": lake.sha256(d["path"])})
    records.sort(key=lambda r: r["part"])
    for r in records:
        r["path"] = f"{final}/{part_name(r['part'])}.parquet"
    stats: dict[str, float] = {}
    for out in outputs:
        for k, v in out["stats"].items():
            stats[k] = stats.get(k, 0) + v
    rows = sum(int(r["rows"]) for r in records)
    info = {
        **writer.encoding("embeddings"),
        **metadata,
        "rows": rows,
        "parts": n_parts,
        "width": width,
        "token_budget": budget,
        "files": [{k: r[k] for k in ("path", "part", "rows", "bytes", "sha256")} for r in records],
    }
    info.pop("part", None)
    if not lake.commit(stage, final, info, exist_ok=True):
        log.info("embeddings %s were published meanwhile by another run", lake.url(final))
    commit_s = time.perf_counter() - t0
    usage = monitor.stop()
    worker_rss = max((int(o["peak_rss_bytes"]) for o in outputs), default=0)
    gpu_peaks = [int(o["gpu_peak_memory_bytes"]) for o in outputs if o.get("gpu_peak_memory_bytes") is not None]
    embedded = int(stats.get("cells", 0))
    result = EmbedResult(
        dataset_id=dataset_id,
        model=model,
        rows=rows,
        parts=n_parts,
        prefix=lake.url(final),
        device=dev,
        precision=prec,
        width=width,
        cells_per_s=embedded / embed_s if embed_s > 0 and embedded else 0.0,
        tokens_per_s=stats.get("tokens", 0) / embed_s if embed_s > 0 else 0.0,
        tokens=int(stats.get("tokens", 0)),
        padded_tokens=int(stats.get("padded_tokens", 0)),
        seconds=time.perf_counter() - started,
        stage_seconds={
            "tokenize": tokenize_s,
            "embed": embed_s,
            "read": stats.get("read_s", 0.0),
            "compute": stats.get("compute_s", 0.0),
            "write": stats.get("write_s", 0.0),
            "commit": commit_s,
        },
        peak_rss_bytes=max(usage.peak_rss_bytes, worker_rss),
        gpu_peak_memory_bytes=max(gpu_peaks) if gpu_peaks else usage.gpu_peak_bytes,
        files=info["files"],
        parts_resumed=len(done),
        vocab_hash=vocab.hash,
        token_budget=budget,
        emb_layer=emb_layer,
        synthetic=metadata["synthetic"],
        workers=n_workers,
    )
    log.info(
        "embedded %s cells of %s with %s (%s, %s) in %.1fs: %.2f cells/s, published at %s",
        f"{rows:,}",
        dataset_id,
        model,
        dev,
        prec,
        result.seconds,
        result.cells_per_s,
        result.prefix,
    )
    return result


def _part_cells(lake: Lake, dataset_id: str, vocab_hash: str, part: int) -> int:
    found = writer.read_metadata(lake, PATHS.token_part(dataset_id, vocab_hash, part))
    if found is None:
        raise LakeError(f"token part {part} of dataset {dataset_id!r} cannot be read")
    return found[1]


def _architecture(files: Any) -> tuple[int, int]:
    """Width and number of layers from the model's ``config.json``."""
    import json

    config = json.loads(files.config.read_text())
    return int(config["hidden_size"]), int(config["num_hidden_layers"])
