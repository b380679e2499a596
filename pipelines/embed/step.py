"""``embed_dataset``: tokens to published, hive-partitioned embedding Parquet for one (dataset, model).

The step resolves the device and precision from the model's resource profile
(:meth:`Profile.compute_for <pipelines.profiles.Profile.compute_for>`), makes sure the
dataset's tokens for the model's vocabulary exist (:func:`tokenize_dataset`), picks the
cells that passed validation, and streams the parts through the engine
(:mod:`pipelines.embed.dispatch`): in this process when no Dask cluster is configured,
else over the cluster's workers.

Each part is written to the staging folder of
``embeddings/model=<m>/dataset_id=<id>/`` as soon as it is done; the folder is committed
(``_SUCCESS`` holding the run's manifest) when every part is there. A run that crashed
resumes: parts already staged with the same model, vocabulary, layer and precision are
kept. A published output is never recomputed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.dask_cluster import cluster_or_threads
from pipelines.embed import writer
from pipelines.embed.dispatch import dispatch
from pipelines.embed.engine import EmbedJob, EngineOptions, rows_hash
from pipelines.embed.tokenizer import TOKENIZER_VERSION
from pipelines.embed.tokens import tokenize_dataset, vocabulary_for
from pipelines.errors import ConfigError, LakeError
from pipelines.lake import PATHS, Lake, check_dataset_id, check_model_name, part_name
from pipelines.logs import get_logger

if TYPE_CHECKING:
    from pipelines.embed.tokenizer import Vocabulary
    from pipelines.profiles import Compute, Profile
    from pipelines.settings import Settings
    from pipelines.usage import Usage

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
    attention: str | None = None  # how the engines computed attention ("fused", "blocks"; both: "blocks,fused")

    def summary(self) -> dict[str, Any]:
        return asdict(self)


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
    for rel, meta, n in writer.staged_metadata(lake, stage, "embeddings"):
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
        attention=info.get("attention"),
    )


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
    from pipelines.usage import ResourceMonitor

    started = time.perf_counter()
    check_dataset_id(dataset_id)
    check_model_name(model)
    lake = Lake(settings)
    final = PATHS.embeddings(model, dataset_id)
    if lake.is_published(final):
        log.info("embeddings of %s with %s are already published at %s", dataset_id, model, lake.url(final))
        return _published_result(lake, dataset_id, model, final, started)
    setup = _set_up(settings, lake, dataset_id, model, device, precision, token_budget, emb_layer)
    monitor = ResourceMonitor()
    monitor.start()
    seconds: dict[str, float] = {}
    # One connection to the configured cluster for both phases (the client given, else SCLAKE_DASK_ADDRESS's).
    with cluster_or_threads(settings, client) as client:
        with _timer(seconds, "tokenize"):
            n_parts = tokenize_dataset(settings, dataset_id, model, client=client).parts
        vocab = vocabulary_for(settings, model)
        keep, expected_rows, hashes = _rows(lake, dataset_id, vocab.hash, n_parts, keep)
        metadata = _part_metadata(setup, dataset_id, model, emb_layer, vocab.hash)
        stage = lake.open_stage(final)
        done = _staged(lake, stage, _same_run(metadata), expected_rows, hashes)
        todo = [p for p in range(n_parts) if p not in done]
        if done:
            log.info("resuming: %d of %d parts already staged", len(done), n_parts)
        job = _job(settings, setup, vocab, stage, metadata)
        resources = setup.profile.dask_resources_for(setup.compute.device)
        with _timer(seconds, "embed"):
            outputs = dispatch(settings, client, job, todo, keep, resources, progress)
    with _timer(seconds, "commit"):
        info = _manifest(lake, final, outputs, done, metadata, n_parts, setup)
        if not lake.commit(stage, final, info, exist_ok=True):
            log.info("embeddings %s were published meanwhile by another run", lake.url(final))
    result = _result(lake.url(final), info, outputs, seconds, monitor.stop(), started, len(done))
    log.info(
        "embedded %s cells of %s with %s (%s, %s) in %.1fs: %.2f cells/s, published at %s",
        f"{result.rows:,}",
        dataset_id,
        model,
        result.device,
        result.precision,
        result.seconds,
        result.cells_per_s,
        result.prefix,
    )
    return result


@dataclass(frozen=True)
class _Setup:
    """What a run resolved before any work: the model's profile and files, where and how it computes."""

    profile: Profile
    files: Any
    compute: Compute
    width: int
    synthetic: bool


@contextlib.contextmanager
def _timer(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t0


def _set_up(
    settings: Settings,
    lake: Lake,
    dataset_id: str,
    model: str,
    device: str | None,
    precision: str | None,
    token_budget: int | None,
    emb_layer: int,
) -> _Setup:
    """Check what a run needs before any work: the dataset, the model's files, device, precision and layer."""
    from pipelines.embed.encoder import layers_needed
    from pipelines.models import check_model_files, read_manifest
    from pipelines.profiles import get_profile

    if not lake.is_published(PATHS.zarr(dataset_id)):
        raise LakeError(f"dataset {dataset_id!r} is not in the lake {lake.uri!r}; run `sclake ingest` first")
    profile = get_profile(model)
    files = check_model_files(settings, model)
    compute = profile.compute_for(device, precision, token_budget)
    width, n_layers = _architecture(files)
    try:
        layers_needed(emb_layer, n_layers)
    except ValueError as e:
        raise ConfigError(f"model {model!r}: {e}") from None
    manifest = read_manifest(files) or {}
    return _Setup(profile, files, compute, width, bool(manifest.get("synthetic", False)))


def _rows(
    lake: Lake, dataset_id: str, vocab_hash: str, n_parts: int, keep: dict[int, np.ndarray] | None
) -> tuple[dict[int, np.ndarray] | None, dict[int, int], dict[int, str]]:
    """The rows to embed per part (``None``: every row), how many per part, and their fingerprints."""
    if keep is None:
        keep = kept_rows(lake, dataset_id, n_parts)
    else:  # parts not named keep no cell
        keep = {p: np.asarray(keep.get(p, ()), dtype=np.int64) for p in range(n_parts)}
    expected = {
        p: int(len(keep[p])) if keep is not None else _part_cells(lake, dataset_id, vocab_hash, p)
        for p in range(n_parts)
    }
    hashes = {p: rows_hash(None if keep is None else keep[p]) for p in range(n_parts)}
    return keep, expected, hashes


def _part_metadata(setup: _Setup, dataset_id: str, model: str, emb_layer: int, vocab_hash: str) -> dict[str, Any]:
    """The key-value metadata of every part (and of the commit marker)."""
    return {
        "dataset_id": dataset_id,
        "model": model,
        "model_version": setup.files.version,
        "synthetic": setup.synthetic,
        "emb_mode": "cell",
        "emb_layer": emb_layer,
        "precision": setup.compute.precision,
        "device": setup.compute.device,
        "tokenizer_version": TOKENIZER_VERSION,
        "vocab_hash": vocab_hash,
        "sclake_version": writer.package_version("sclake"),
        "torch_version": writer.package_version("torch"),
    }


def _same_run(metadata: dict[str, Any]) -> dict[str, str]:
    """The metadata a staged part must share with this run to be kept by a resumed one."""
    return {
        "encoding-version": writer.encoding("embeddings")["encoding-version"],
        "model": metadata["model"],
        "vocab_hash": metadata["vocab_hash"],
        "precision": metadata["precision"],
        "emb_layer": str(metadata["emb_layer"]),
    }


def _job(settings: Settings, setup: _Setup, vocab: Vocabulary, stage: str, metadata: dict[str, Any]) -> EmbedJob:
    dataset_id, model = metadata["dataset_id"], metadata["model"]
    return EmbedJob(
        settings=settings,
        dataset_id=dataset_id,
        model=model,
        model_dir=str(setup.files.model_dir),
        tokens_prefix=PATHS.tokens(dataset_id, vocab.hash),
        stage=stage,
        cls_present="<cls>" in vocab.token_dictionary,
        eos_present="<eos>" in vocab.token_dictionary,
        pad_id=vocab.pad_id,
        options=EngineOptions(
            device=setup.compute.device,
            precision=setup.compute.precision,
            token_budget=setup.compute.token_budget,
            emb_layer=metadata["emb_layer"],
            memory_cap_bytes=int(setup.profile.host_memory),
            attention=settings.cpu_attention,
        ),
        metadata=metadata,
    )


def _manifest(
    lake: Lake,
    final: str,
    outputs: list[dict[str, Any]],
    done: dict[int, dict[str, Any]],
    metadata: dict[str, Any],
    n_parts: int,
    setup: _Setup,
) -> dict[str, Any]:
    """What the commit marker holds: the run's metadata, totals and one record per part file."""
    records = [f for out in outputs for f in out["files"]]
    for d in done.values():
        records.append({**d, "bytes": lake.size(d["path"]), "sha256": lake.sha256(d["path"])})
    records.sort(key=lambda r: r["part"])
    for r in records:
        r["path"] = f"{final}/{part_name(r['part'])}.parquet"
    info = {
        **writer.encoding("embeddings"),
        **metadata,
        "rows": sum(int(r["rows"]) for r in records),
        "parts": n_parts,
        "width": setup.width,
        "token_budget": setup.compute.token_budget,
        "files": [{k: r[k] for k in ("path", "part", "rows", "bytes", "sha256")} for r in records],
    }
    kinds = sorted({str(o["attention"]) for o in outputs if o.get("attention")})
    if kinds:
        info["attention"] = ",".join(kinds)
    info.pop("part", None)
    return info


def _result(
    prefix: str,
    info: dict[str, Any],
    outputs: list[dict[str, Any]],
    seconds: dict[str, float],
    usage: Usage,
    started: float,
    resumed: int,
) -> EmbedResult:
    """The run's result and metrics from its manifest, the engine's outputs and the phases' times."""
    stats: dict[str, float] = {}
    for out in outputs:
        for k, v in out["stats"].items():
            stats[k] = stats.get(k, 0) + v
    embed_s = seconds["embed"]
    worker_rss = max((int(o["peak_rss_bytes"]) for o in outputs), default=0)
    gpu_peaks = [int(o["gpu_peak_memory_bytes"]) for o in outputs if o.get("gpu_peak_memory_bytes") is not None]
    embedded = int(stats.get("cells", 0))
    return EmbedResult(
        dataset_id=info["dataset_id"],
        model=info["model"],
        rows=info["rows"],
        parts=info["parts"],
        prefix=prefix,
        device=info["device"],
        precision=info["precision"],
        width=info["width"],
        cells_per_s=embedded / embed_s if embed_s > 0 and embedded else 0.0,
        tokens_per_s=stats.get("tokens", 0) / embed_s if embed_s > 0 else 0.0,
        tokens=int(stats.get("tokens", 0)),
        padded_tokens=int(stats.get("padded_tokens", 0)),
        seconds=time.perf_counter() - started,
        stage_seconds={
            "tokenize": seconds["tokenize"],
            "embed": embed_s,
            "read": stats.get("read_s", 0.0),
            "compute": stats.get("compute_s", 0.0),
            "write": stats.get("write_s", 0.0),
            "commit": seconds["commit"],
        },
        peak_rss_bytes=max(usage.peak_rss_bytes, worker_rss),
        gpu_peak_memory_bytes=max(gpu_peaks) if gpu_peaks else usage.gpu_peak_bytes,
        files=info["files"],
        parts_resumed=resumed,
        vocab_hash=info["vocab_hash"],
        token_budget=info["token_budget"],
        emb_layer=info["emb_layer"],
        synthetic=info["synthetic"],
        workers=len(outputs) or 1,
        attention=info.get("attention"),
    )


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
