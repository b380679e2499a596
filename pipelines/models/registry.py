"""The Geneformer models sclake knows, and the one place their file paths are built.

Each :class:`ModelSpec` holds the real architecture of a Geneformer checkpoint as
Helical 2.2.0 serves it (BERT, ReLU, layer-norm eps 1e-12, dropout 0.02) together with
what Helical needs to find its files: the version folder (``v1``/``v2``/``v3``), the
input size, whether ``<cls>``/``<eos>`` are used, and the weights file name
(``model.safetensors`` or ``pytorch_model.bin``, exactly as
``GeneformerConfig.list_of_files_to_download`` lists them).

The weights a model folder actually holds may be in any form ``transformers``'
``from_pretrained`` loads (:data:`WEIGHTS_FILES`, in its order of preference): a v1
model saved with ``save_pretrained`` holds ``model.safetensors``, not the
``pytorch_model.bin`` Helical lists. :attr:`ModelFiles.weights` is the file
``from_pretrained`` will load (the spec's name when the folder holds none).

:func:`model_files` turns ``(settings, name)`` into a :class:`ModelFiles` with every
path of Helical's cache layout::

    <prefix>/.cache/helical/models/geneformer/<version>/{token_dictionary,gene_median_dictionary,ensembl_mapping_dict}.pkl
    <prefix>/.cache/helical/models/geneformer/<version>/<model_name>/{config.json,training_args.bin,<weights>,manifest.json}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ModelFilesError
from pipelines.models.vocabulary import SPECIAL_TOKENS

if TYPE_CHECKING:
    from pipelines.settings import Settings

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# What ``transformers``' ``from_pretrained`` loads from a local folder, in its order of
# preference (``modeling_utils._get_resolved_checkpoint_files``): the first one present wins.
WEIGHTS_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)
MANIFEST = "manifest.json"
TOKEN_DICTIONARY = "token_dictionary.pkl"
GENE_MEDIANS = "gene_median_dictionary.pkl"
GENE_MAPPING = "ensembl_mapping_dict.pkl"

# The network of a ``--tiny`` model: vocabulary, input size and special tokens are kept.
TINY_ARCHITECTURE = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and file layout of one Geneformer model.

    Attributes
    ----------
    name : str
        Helical's model name, e.g. ``"gf-6L-10M-i2048"``.
    version : str
        Helical's folder for the model family: ``"v1"``, ``"v2"`` or ``"v3"``.
    num_layers, hidden_size, num_heads, intermediate_size : int
        The BERT encoder.
    max_positions : int
        Context length (Helical's ``input_size``; ``max_position_embeddings``).
    vocab_size : int
        Tokens in the token dictionary, special tokens included.
    weights_file : str
        ``model.safetensors`` or ``pytorch_model.bin``.
    """

    name: str
    version: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    vocab_size: int
    weights_file: str
    description: str = ""
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.02
    initializer_range: float = 0.02
    pad_token_id: int = 0
    type_vocab_size: int = 2

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Special tokens at the start of the token dictionary (``<pad>``, ``<mask>`` [, ``<cls>``, ``<eos>``])."""
        return SPECIAL_TOKENS[self.version]

    @property
    def special_token(self) -> bool:
        """Whether cells are framed with ``<cls>`` ... ``<eos>`` (Helical's ``special_token``)."""
        return "<cls>" in self.special_tokens

    @property
    def input_size(self) -> int:
        """Helical's name for the context length."""
        return self.max_positions

    def architecture(self, *, tiny: bool = False) -> dict[str, int]:
        """Layers, width, heads and feed-forward size; ``tiny`` gives the small test network."""
        if tiny:
            return dict(TINY_ARCHITECTURE)
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
        }

    def bert_config(self, *, tiny: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``transformers.BertConfig`` (the fields of Geneformer's ``config.json``)."""
        arch = self.architecture(tiny=tiny)
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": arch["hidden_size"],
            "num_hidden_layers": arch["num_layers"],
            "num_attention_heads": arch["num_heads"],
            "intermediate_size": arch["intermediate_size"],
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.dropout,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "use_cache": True,
        }

    def parameter_count(self, *, tiny: bool = False) -> int:
        """Parameters of ``BertForMaskedLM`` with this architecture (decoder tied to the embeddings)."""
        arch = self.architecture(tiny=tiny)
        h, inter, n = arch["hidden_size"], arch["intermediate_size"], arch["num_layers"]
        embeddings = (self.vocab_size + self.max_positions + self.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
        head = (h * h + h) + 2 * h + self.vocab_size  # transform dense + LayerNorm + decoder bias
        return embeddings + n * layer + head


def _spec(name: str, version: str, layers: int, hidden: int, heads: int, inter: int, positions: int, **kw: Any):
    vocab = {"v1": 25_426, "v2": 20_275, "v3": 20_275}[version]
    weights = SAFETENSORS if version != "v1" or name == "gf-12L-40M-i2048-CZI-CellxGene" else PYTORCH_BIN
    return ModelSpec(name, version, layers, hidden, heads, inter, positions, vocab, weights, **kw)


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("gf-6L-10M-i2048", "v1", 6, 256, 4, 512, 2048, description="Geneformer v1, 6 layers (was gf-6L-30M)"),
        _spec("gf-12L-40M-i2048", "v1", 12, 512, 8, 1024, 2048, description="Geneformer v1, 12 layers"),
        _spec(
            "gf-12L-40M-i2048-CZI-CellxGene",
            "v1",
            12,
            512,
            8,
            1024,
            2048,
            description="Geneformer v1, 12 layers, CZI CELLxGENE",
        ),
        _spec("gf-12L-38M-i4096", "v2", 12, 512, 8, 1024, 4096, description="Geneformer v2, 12 layers"),
        _spec("gf-12L-38M-i4096-CLcancer", "v2", 12, 512, 8, 1024, 4096, description="Geneformer v2, cancer-tuned"),
        _spec("gf-20L-151M-i4096", "v2", 20, 896, 14, 1792, 4096, description="Geneformer v2, 20 layers"),
        _spec("gf-12L-104M-i4096", "v3", 12, 768, 12, 3072, 4096, description="Geneformer v3, 12 layers"),
        _spec("gf-12L-104M-i4096-CLcancer", "v3", 12, 768, 12, 3072, 4096, description="Geneformer v3, cancer-tuned"),
        _spec("gf-18L-316M-i4096", "v3", 18, 1152, 18, 4608, 4096, description="Geneformer v3, 18 layers"),
    )
}


def model_names() -> list[str]:
    """Every model name sclake knows, in registry order."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; :class:`ModelFilesError` lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelFilesError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


@dataclass(frozen=True)
class ModelFiles:
    """Every path of one model in Helical's cache layout.

    ``models_root`` is what Helical calls ``CACHE_DIR_HELICAL``
    (``<prefix>/.cache/helical/models``); :meth:`helical_files` maps Helical's relative
    names (``geneformer/v1/...``, as in ``list_of_files_to_download``) to paths.
    """

    name: str
    version: str
    prefix: Path
    models_root: Path
    family_dir: Path
    version_dir: Path
    model_dir: Path
    config: Path
    weights: Path
    training_args: Path
    token_dictionary: Path
    gene_medians: Path
    gene_mapping: Path
    manifest: Path
    spec: ModelSpec = field(repr=False, compare=False)

    @property
    def weights_file(self) -> str:
        """Name of the weights file ``from_pretrained`` loads (an ``*.index.json`` for sharded weights)."""
        return self.weights.name

    @property
    def sharded(self) -> bool:
        return self.weights.name.endswith(".index.json")

    def weight_shards(self) -> list[str]:
        """The shard file names an ``*.index.json`` names (its ``weight_map`` values), sorted.

        Raises
        ------
        ModelFilesError
            The index cannot be read, maps no tensors, or names a shard outside the model folder.
        """
        if not self.sharded:
            return []
        try:
            weight_map = json.loads(self.weights.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFilesError(f"weights index {str(self.weights)!r} cannot be read: {e!r}") from e
        bad = [n for n in shards if not isinstance(n, str) or n in ("", ".", "..") or "/" in n or "\\" in n]
        if not shards or bad:
            raise ModelFilesError(
                f"weights index {str(self.weights)!r} names {'no shards' if not shards else f'shards {bad!r}'}; "
                "its weight_map must name shard files in the model folder"
            )
        return shards

    def weights_paths(self) -> list[Path]:
        """The weights file and, for sharded weights, every shard it names (an unreadable index: itself only)."""
        try:
            shards = self.weight_shards()
        except ModelFilesError:
            shards = []
        return [self.weights, *(self.model_dir / n for n in shards)]

    def helical_files(self) -> dict[str, Path]:
        """Helical's relative file names (``geneformer/<version>/...``) mapped to their paths."""
        return {self.relative(p): p for p in self.required()}

    def required(self) -> list[Path]:
        """The files Helical needs, in the order of ``list_of_files_to_download``, with the
        weights as the folder holds them (:meth:`weights_paths`)."""
        return [
            self.gene_medians,
            self.token_dictionary,
            self.gene_mapping,
            self.config,
            self.training_args,
            *self.weights_paths(),
        ]

    def relative(self, path: Path) -> str:
        """``path`` relative to :attr:`models_root` (``geneformer/v1/gf-6L-10M-i2048/config.json``)."""
        return path.relative_to(self.models_root).as_posix()


def find_weights(model_dir: Path) -> Path | None:
    """The weights file ``from_pretrained`` would load from ``model_dir`` (see :data:`WEIGHTS_FILES`), or ``None``."""
    return next((model_dir / n for n in WEIGHTS_FILES if (model_dir / n).is_file()), None)


def files_under(prefix: Path, name: str) -> ModelFiles:
    """The :class:`ModelFiles` of model ``name`` under the Helical cache prefix ``prefix``."""
    spec = get_spec(name)
    prefix = Path(prefix)
    models_root = prefix / ".cache" / "helical" / "models"
    family = models_root / "geneformer"
    version_dir = family / spec.version
    model_dir = version_dir / name
    return ModelFiles(
        name=name,
        version=spec.version,
        prefix=prefix,
        models_root=models_root,
        family_dir=family,
        version_dir=version_dir,
        model_dir=model_dir,
        config=model_dir / "config.json",
        weights=find_weights(model_dir) or model_dir / spec.weights_file,
        training_args=model_dir / "training_args.bin",
        token_dictionary=version_dir / TOKEN_DICTIONARY,
        gene_medians=version_dir / GENE_MEDIANS,
        gene_mapping=version_dir / GENE_MAPPING,
        manifest=model_dir / MANIFEST,
        spec=spec,
    )


def model_files(settings: Settings, name: str) -> ModelFiles:
    """Every path of model ``name`` in Helical's cache layout under ``settings.helical_prefix()``.

    Parameters
    ----------
    settings : Settings
        Where the cache lives (``SCLAKE_MODELS_DIR``, else ``CACHE_DIR_HELICAL_PREFIX``, else ``SCLAKE_HOME``).
    name : str
        A Geneformer model name (see :data:`MODELS`).

    Returns
    -------
    ModelFiles
        Paths only; nothing is checked or created (see ``pipelines.models.loader.check_model_files``).
    """
    return files_under(settings.helical_prefix(), name)
