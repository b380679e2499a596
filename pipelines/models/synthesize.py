"""Synthetic Geneformer model files: the real architecture with random weights.

No model weights can be downloaded where sclake is developed and tested, yet the
pipeline and its benchmarks need every file Helical reads, with the true shapes, so that
tokenization, loading and compute cost are real. :func:`synthesize` writes them in
Helical's cache layout:

* ``config.json`` and the weights (``model.safetensors`` or ``pytorch_model.bin``, as
  Helical expects for that model) of a ``BertForMaskedLM`` initialised from ``seed``;
* ``training_args.bin`` (a plain dict, loadable with ``torch.load(weights_only=True)``);
* the version's token, gene-median and Ensembl-mapping dictionaries, built from the
  synthetic gene universe (:mod:`pipelines.models.vocabulary`);
* ``manifest.json``: ``synthetic: true``, ``tiny``, ``seed``, the architecture and the
  SHA-256 of every file, so lineage can never mistake these weights for trained ones.

The model folder is built under a temporary name beside its final place and renamed into
place when complete, so a crash never leaves a half model that looks complete. The shared
dictionaries are each replaced atomically.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ModelFilesError
from pipelines.logs import get_logger
from pipelines.models import vocabulary
from pipelines.models.loader import check_files
from pipelines.models.manifest import ENCODING, file_entries, file_sha256, read_manifest
from pipelines.models.registry import MANIFEST, PYTORCH_BIN, ModelFiles, ModelSpec, get_spec, model_files

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _atomic_pickle(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_dictionaries(files: ModelFiles, *, force: bool) -> None:
    """Write the version's dictionaries, keeping identical ones; never silently replace different ones."""
    version = files.version
    wanted = {
        files.token_dictionary: vocabulary.token_dictionary,
        files.gene_medians: vocabulary.gene_medians,
        files.gene_mapping: vocabulary.gene_mapping,
    }
    for path, build in wanted.items():
        content = build(version)
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    same = pickle.load(f) == content  # the model's own dictionaries, as Helical reads them
            except (OSError, pickle.UnpicklingError, EOFError, ValueError):
                same = False
            if same:
                log.info("keeping %s (identical)", path)
                continue
            if not force:
                raise ModelFilesError(
                    f"{str(path)!r} differs from the synthetic {version} dictionary (real model files of {version}?); "
                    f"pass --force to replace it (models of {version} then use the synthetic vocabulary)"
                )
        _atomic_pickle(path, content)
        log.info("wrote %s (%d entries)", path, len(content))


def _write_network(spec: ModelSpec, folder: Path, *, tiny: bool, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    config = BertConfig(**spec.bert_config(tiny=tiny))
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
    model.eval()
    log.info(
        "initialised %s network: %s parameters in %.1fs",
        spec.name,
        f"{sum(p.numel() for p in model.parameters()):,}",
        time.perf_counter() - started,
    )
    if spec.weights_file == PYTORCH_BIN:
        model.config.architectures = ["BertForMaskedLM"]
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / PYTORCH_BIN)
    else:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one shard: a progress bar says nothing
        try:
            model.save_pretrained(folder)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    log.info("wrote %s (%.1f MB)", spec.weights_file, (folder / spec.weights_file).stat().st_size / 1e6)


def _training_args(spec: ModelSpec, *, tiny: bool, seed: int) -> dict[str, Any]:
    # Plain values only, so that ``torch.load(..., weights_only=True)`` reads it.
    return {
        "synthetic": True,
        "trained": False,
        "model_name": spec.name,
        "tiny": tiny,
        "seed": seed,
        "note": "random initial weights written by `sclake models synthesize`; no training took place",
    }


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _manifest(files: ModelFiles, stage: Path, *, tiny: bool, seed: int) -> dict[str, Any]:
    spec = files.spec
    entries = file_entries(files, [files.gene_medians, files.token_dictionary, files.gene_mapping])
    for final in (files.config, files.training_args, files.model_dir / spec.weights_file):
        staged = stage / final.name
        entries[files.relative(final)] = {"sha256": file_sha256(staged), "bytes": staged.stat().st_size}
    return {
        **ENCODING,
        "model": spec.name,
        "version": spec.version,
        "synthetic": True,
        "tiny": tiny,
        "seed": seed,
        "architecture": {
            **spec.architecture(tiny=tiny),
            "max_positions": spec.max_positions,
            "vocab_size": spec.vocab_size,
            "hidden_act": spec.hidden_act,
            "layer_norm_eps": spec.layer_norm_eps,
            "dropout": spec.dropout,
        },
        "parameters": spec.parameter_count(tiny=tiny),
        "input_size": spec.input_size,
        "special_tokens": list(spec.special_tokens),
        "weights_file": spec.weights_file,
        "files": entries,
        "software": {p: _version(p) for p in ("sclake", "torch", "transformers", "helical")},
    }


def _existing_fits(files: ModelFiles, *, tiny: bool, seed: int) -> bool:
    """Whether the model folder already holds an intact synthetic model with these parameters."""
    manifest = read_manifest(files)
    if manifest is None or not manifest.get("synthetic"):
        return False
    if bool(manifest.get("tiny")) != tiny or manifest.get("seed") != seed:
        return False
    check_files(files)
    return True


def _describe_existing(files: ModelFiles) -> str:
    try:
        manifest = read_manifest(files)
    except ModelFilesError as e:
        return str(e)
    if manifest is None:
        return "files without a sclake manifest (real model files?)"
    kind = "synthetic" if manifest.get("synthetic") else "trained"
    return f"a {kind} model, tiny={manifest.get('tiny')}, seed={manifest.get('seed')}"


def _install(stage: Path, final: Path) -> None:
    """Move the complete ``stage`` folder to ``final``, replacing an existing folder last."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
    os.rename(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def synthesize(settings: Settings, name: str, tiny: bool = False, seed: int = 0, *, force: bool = False) -> ModelFiles:
    """Write synthetic model files for ``name`` (real architecture, random weights) in Helical's layout.

    Parameters
    ----------
    settings : Settings
        Gives the Helical cache prefix (``settings.helical_prefix()``).
    name : str
        A model name from ``pipelines.models.registry.MODELS``.
    tiny : bool, default False
        Keep vocabulary, input size and special tokens but shrink the network to 2 layers of
        width 32 (fast tests).
    seed : int, default 0
        Seed of the random weights.
    force : bool, default False
        Replace an existing model folder (and dictionaries that differ from the synthetic ones).

    Returns
    -------
    ModelFiles
        The paths written. When an intact synthetic model with the same ``tiny`` and ``seed``
        is already present, nothing is written and its files are returned.

    Raises
    ------
    ModelFilesError
        ``name`` is unknown, or different model files are present and ``force`` is not set.
    """
    spec = get_spec(name)
    files = model_files(settings, name)
    if files.model_dir.exists() and not force:
        if _existing_fits(files, tiny=tiny, seed=seed):
            log.info("%s: synthetic model (tiny=%s, seed=%s) already present at %s", name, tiny, seed, files.model_dir)
            return files
        raise ModelFilesError(
            f"{str(files.model_dir)!r} already holds {_describe_existing(files)}; pass --force to replace it"
        )
    log.info(
        "synthesizing %s (%s, %s, %s parameters, seed %d) under %s",
        name,
        spec.version,
        "tiny" if tiny else "full size",
        f"{spec.parameter_count(tiny=tiny):,}",
        seed,
        files.models_root,
    )
    files.version_dir.mkdir(parents=True, exist_ok=True)
    _write_dictionaries(files, force=force)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=files.version_dir))
    # mkdtemp makes the folder 0700; a model folder is read by other users too (a worker
    # container's user, say), as any folder mkdir would make under the process's umask.
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)
    try:
        _write_network(spec, stage, tiny=tiny, seed=seed)
        import torch

        torch.save(_training_args(spec, tiny=tiny, seed=seed), stage / files.training_args.name)
        manifest = _manifest(files, stage, tiny=tiny, seed=seed)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_tree(stage)
        try:
            _install(stage, files.model_dir)
        except OSError:
            # Another process installed the same model meanwhile: use it if it fits.
            if not force and files.model_dir.exists() and _existing_fits(files, tiny=tiny, seed=seed):
                return files
            raise
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    log.info("%s: %d files written to %s", name, len(manifest["files"]), files.model_dir)
    return model_files(settings, name)  # the paths of what is there now
