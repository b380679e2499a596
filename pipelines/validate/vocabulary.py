"""Gene ids against a model's vocabulary (its token dictionary and Ensembl mapping dictionary)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipelines.errors import ModelFilesError
from pipelines.settings import Settings

VERSION_SUFFIX = re.compile(r"\.\d+$")


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.17`` -> ``ENSG00000141510`` (Geneformer's dictionaries hold unversioned ids)."""
    return VERSION_SUFFIX.sub("", gene_id)


@lru_cache(maxsize=8)
def _vocabulary(model: str, prefix: str, stamp: tuple[int, int]) -> tuple[frozenset[str], dict[str, str]]:
    from pipelines.models import load_gene_mapping, load_token_dictionary
    from pipelines.models.registry import files_under

    files = files_under(Path(prefix), model)
    tokens = load_token_dictionary(files)
    mapping = load_gene_mapping(files) if files.gene_mapping.is_file() else {}
    genes = frozenset(k for k in tokens if isinstance(k, str) and not k.startswith("<"))
    return genes, {str(k): str(v) for k, v in mapping.items()}


def model_vocabulary(settings: Settings, model: str) -> tuple[frozenset[str], dict[str, str]]:
    """``(genes, mapping)``: the gene ids of ``model``'s token dictionary and its Ensembl mapping dictionary.

    Only the dictionaries are read (no weights), once per process and file version.

    Raises
    ------
    ModelFilesError
        The model is unknown or its token dictionary is absent (the message says how to get it).
    """
    from pipelines.models import model_files

    files = model_files(settings, model)
    if not files.token_dictionary.is_file():
        raise ModelFilesError(
            f"the token dictionary of model {model!r} is missing ({str(files.token_dictionary)!r}); "
            f"validation checks genes against it: install the model files or run `sclake models synthesize {model}`"
        )
    mapping_stamp = files.gene_mapping.stat().st_mtime_ns if files.gene_mapping.is_file() else 0
    stamp = (files.token_dictionary.stat().st_mtime_ns, mapping_stamp)
    return _vocabulary(model, str(files.prefix), stamp)


def in_vocabulary(gene_ids: list[str] | np.ndarray, genes: frozenset[str], mapping: dict[str, str]) -> np.ndarray:
    """Whether each gene id (version suffix ignored) is in the vocabulary, directly or through ``mapping``."""
    out = np.zeros(len(gene_ids), dtype=bool)
    for i, gid in enumerate(gene_ids):
        if isinstance(gid, str):
            base = strip_version(gid)
            out[i] = base in genes or mapping.get(base) in genes
    return out
