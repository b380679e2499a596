"""Load Geneformer from local files only: presence and checksum checks, dictionaries, Helical's model.

Helical's ``Geneformer.__init__`` runs its ``Downloader`` over every model file. The
downloader sends a HEAD request per file and, when that request fails (no network), takes
the cached file for corrupt and deletes it. :func:`load_geneformer` therefore checks the
files itself and constructs Helical's own ``Geneformer`` with a downloader that only
asserts that each file is present, and with every path pointed at the settings' cache
prefix (Helical computes its cache directory once, when it is first imported, from
``CACHE_DIR_HELICAL_PREFIX``; sclake does not depend on that import order).

The dictionary loaders give an inference engine what it needs without importing Helical.
"""

from __future__ import annotations

import json
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ModelFilesError
from pipelines.logs import get_logger
from pipelines.models.manifest import read_manifest, verify_manifest
from pipelines.models.registry import WEIGHTS_FILES, ModelFiles, get_spec, model_files

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = get_logger(__name__)

EMB_MODES = ("cell", "cls", "gene")
# Held while Helical's downloader is swapped out, so two loads never interleave the swap.
_construct_lock = threading.RLock()


def _fix_hint(files: ModelFiles) -> str:
    return (
        f"`sclake models synthesize {files.name}` writes synthetic model files (add --tiny for a small test model), "
        f"or copy the real files into {str(files.version_dir)!r}"
    )


def check_model_files(settings: Settings, name: str, *, verify: bool = True) -> ModelFiles:
    """Check that every file Helical needs for ``name`` is present (and intact, if a manifest says so).

    Parameters
    ----------
    settings : Settings
        Gives the Helical cache prefix.
    name : str
        Model name (see ``pipelines.models.registry.MODELS``).
    verify : bool, default True
        Compare sizes and SHA-256 against ``manifest.json`` when the model has one
        (hashes are cached per process, so repeated checks are cheap).

    Returns
    -------
    ModelFiles

    Raises
    ------
    ModelFilesError
        Naming the missing, empty or altered file and the command that writes it.
    """
    return check_files(model_files(settings, name), verify=verify)


def check_files(files: ModelFiles, *, verify: bool = True) -> ModelFiles:
    """:func:`check_model_files` for paths already built (e.g. under another prefix).

    The weights may be in any form ``transformers``' ``from_pretrained`` loads
    (``model.safetensors``, ``pytorch_model.bin`` or a sharded ``*.index.json`` with its
    shards); ``files.weights`` is the one it will load. With a manifest, that file must be
    one the manifest describes.
    """
    if files.sharded:
        files.weight_shards()  # a readable index naming shards in the folder
    for path in files.required():
        if not path.is_file():
            raise ModelFilesError(f"model {files.name!r}: file {str(path)!r} is missing; {_fix_hint(files)}")
        if path.stat().st_size == 0:
            raise ModelFilesError(f"model {files.name!r}: file {str(path)!r} is empty; {_fix_hint(files)}")
    if verify:
        manifest = read_manifest(files)
        if manifest is not None:
            if manifest.get("model") != files.name:
                raise ModelFilesError(
                    f"manifest {str(files.manifest)!r} describes model {manifest.get('model')!r}, not {files.name!r}"
                )
            listed = manifest.get("files", {})
            unlisted = [files.relative(p) for p in files.weights_paths() if files.relative(p) not in listed]
            if unlisted:
                raise ModelFilesError(
                    f"model {files.name!r} would load the weights {unlisted!r}, which its manifest "
                    f"{str(files.manifest)!r} does not describe (it names {manifest.get('weights_file')!r}); "
                    "remove the weights that are not meant to be used, or the manifest of the old ones"
                )
            verify_manifest(files, manifest)
    return files


def _load_pickled_dict(path: Path, what: str) -> dict[Any, Any]:
    if not path.is_file():
        raise ModelFilesError(f"{what} {str(path)!r} is missing")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # the model's own dictionaries, as Helical reads them
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise ModelFilesError(f"{what} {str(path)!r} cannot be read: {e}") from e
    if not isinstance(data, dict) or not data:
        raise ModelFilesError(f"{what} {str(path)!r} holds {type(data).__name__}, a non-empty dict was expected")
    return data


def load_token_dictionary(files: ModelFiles) -> dict[str, int]:
    """Token ids by Ensembl id (special tokens ``<pad>``, ``<mask>`` [, ``<cls>``, ``<eos>``] included)."""
    tokens = _load_pickled_dict(files.token_dictionary, "token dictionary")
    if "<pad>" not in tokens:
        raise ModelFilesError(f"token dictionary {str(files.token_dictionary)!r} has no '<pad>' token")
    if files.spec.special_token and not {"<cls>", "<eos>"} <= tokens.keys():
        raise ModelFilesError(
            f"token dictionary {str(files.token_dictionary)!r} lacks '<cls>'/'<eos>', which {files.name!r} uses"
        )
    return tokens


def load_gene_medians(files: ModelFiles) -> dict[str, float]:
    """Non-zero median expression by Ensembl id (the rank-value normalisation factors)."""
    return _load_pickled_dict(files.gene_medians, "gene median dictionary")


def load_gene_mapping(files: ModelFiles) -> dict[str, str]:
    """Ensembl id (or alias) to the Ensembl id it collapses onto."""
    return _load_pickled_dict(files.gene_mapping, "Ensembl mapping dictionary")


class _LocalFilesOnly:
    """Stands in for Helical's ``Downloader``: asserts each file is present, never touches the network."""

    def __init__(self, files: ModelFiles) -> None:
        self.files = files

    def __call__(self, *args: object, **kwargs: object) -> _LocalFilesOnly:
        return self

    def download_via_name(self, name: str) -> None:
        path = self.files.models_root / name
        if path.is_file():
            return
        # Helical names one weights file; transformers loads any of WEIGHTS_FILES, so the
        # weights the folder holds stand for the one Helical names.
        if path.parent == self.files.model_dir and path.name in WEIGHTS_FILES:
            if all(p.is_file() for p in self.files.weights_paths()):
                return
        raise ModelFilesError(f"model {self.files.name!r}: file {str(path)!r} is missing; {_fix_hint(self.files)}")

    def download_via_link(self, output: Path, link: str) -> None:
        if not Path(output).is_file():
            raise ModelFilesError(f"file {str(output)!r} is missing and sclake does not download {link!r}")


def helical_config(files: ModelFiles, **options: Any) -> Any:
    """Helical's ``GeneformerConfig`` for ``files``, with every path pointed at ``files`` (imports Helical)."""
    from helical.models.geneformer import GeneformerConfig

    config = GeneformerConfig(model_name=files.name, **options)
    config.model_dir = files.family_dir
    config.files_config = {
        "model_files_dir": files.model_dir,
        "gene_median_path": files.gene_medians,
        "token_path": files.token_dictionary,
        "ensembl_dict_path": files.gene_mapping,
    }
    return config


def load_geneformer(
    settings: Settings,
    name: str,
    *,
    device: str = "cpu",
    batch_size: int = 24,
    emb_layer: int = -1,
    emb_mode: str = "cell",
    nproc: int = 1,
    custom_attr_name_dict: dict[str, str] | None = None,
    verify: bool = True,
) -> Any:
    """Helical's ``Geneformer`` built from the local model files, with no download and no network.

    Parameters
    ----------
    settings : Settings
        Gives the Helical cache prefix.
    name : str
        Model name.
    device : str, default "cpu"
        Any device string torch accepts.
    batch_size, emb_layer, emb_mode, nproc, custom_attr_name_dict
        Passed to ``GeneformerConfig``.
    verify : bool, default True
        Check checksums against the manifest first (see :func:`check_model_files`).

    Returns
    -------
    helical.models.geneformer.Geneformer

    Raises
    ------
    ModelFilesError
        A file is missing or altered, or ``emb_mode`` does not fit the model.
    """
    spec = get_spec(name)
    if emb_mode not in EMB_MODES:
        raise ModelFilesError(f"emb_mode {emb_mode!r} is not one of {EMB_MODES}")
    if emb_mode == "cls" and not spec.special_token:
        raise ModelFilesError(f"emb_mode 'cls' needs a model with a <cls> token; {name!r} ({spec.version}) has none")
    files = check_model_files(settings, name, verify=verify)

    import helical.models.geneformer.model as helical_model

    if not hasattr(helical_model, "Downloader"):
        raise ModelFilesError(
            "this Helical release builds Geneformer without `helical.models.geneformer.model.Downloader`; "
            "sclake supports helical==2.2.0"
        )
    config = helical_config(
        files,
        batch_size=batch_size,
        emb_layer=emb_layer,
        emb_mode=emb_mode,
        device=device,
        nproc=nproc,
        custom_attr_name_dict=custom_attr_name_dict,
    )
    log.info("loading %s from %s (%s) on %s", name, files.model_dir, files.weights_file, device)
    with _construct_lock:
        original = helical_model.Downloader
        helical_model.Downloader = _LocalFilesOnly(files)
        try:
            model = helical_model.Geneformer(config)
        finally:
            helical_model.Downloader = original
    return model


@dataclass(frozen=True)
class ModelStatus:
    """What is on disk for one model (see :func:`model_status`)."""

    name: str
    version: str
    model_dir: Path
    present: bool
    missing: list[str] = field(default_factory=list)
    has_manifest: bool = False
    synthetic: bool | None = None
    tiny: bool | None = None
    seed: int | None = None
    bytes: int = 0
    layers: int | None = None
    width: int | None = None
    weights_file: str | None = None


def network_shape(files: ModelFiles) -> tuple[int, int]:
    """``(layers, width)`` of the network the model folder holds, from its ``config.json``
    (``num_hidden_layers``, ``hidden_size``: the width of every embedding it writes); the
    spec's full-size values when there is no readable ``config.json``."""
    spec = files.spec
    try:
        config = json.loads(files.config.read_text())
        return int(config["num_hidden_layers"]), int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return spec.num_layers, spec.hidden_size


def model_status(settings: Settings, name: str) -> ModelStatus:
    """Which of the model's files are present and what its manifest says (no checksums computed).

    ``layers`` and ``width`` are those of the network on disk (a ``--tiny`` model's 2 and
    32), read from its ``config.json``; ``None`` when it has none.
    """
    files = model_files(settings, name)
    missing = [files.relative(p) for p in files.required() if not p.is_file()]
    size = sum(p.stat().st_size for p in files.required() if p.is_file())
    try:
        manifest = read_manifest(files)
    except ModelFilesError:
        manifest = None
    layers, width = network_shape(files) if files.config.is_file() else (None, None)
    return ModelStatus(
        name=name,
        version=files.version,
        model_dir=files.model_dir,
        present=not missing,
        missing=missing,
        has_manifest=manifest is not None,
        synthetic=None if manifest is None else bool(manifest.get("synthetic")),
        tiny=None if manifest is None else bool(manifest.get("tiny")),
        seed=None if manifest is None else manifest.get("seed"),
        bytes=size,
        layers=layers,
        width=width,
        weights_file=files.weights_file if files.weights.is_file() else None,
    )
