"""The embedding engine: Geneformer tokenisation and inference to hive-partitioned Parquet.

Public API
----------
tokenize_dataset(settings, dataset_id, model, *, client=None) -> TokenizeResult
embed_dataset(settings, dataset_id, model, *, device=None, precision=None, client=None, progress=True,
              keep=None, emb_layer=-1, token_budget=None) -> EmbedResult

Modules: ``tokenizer`` (rank-value encoding of CSR blocks), ``tokens`` (the tokenize step
and the stored token parts), ``encoder`` (the BERT encoder, torch only), ``batching``
(length buckets under a token budget), ``engine`` (the streamed inference loop),
``writer`` (Parquet schemas and tables), ``dispatch`` (the engine in this process or on a
Dask cluster), ``step`` (``embed_dataset``).
Importing this package does not import torch, anndata or Helical.
Importing a submodule (``pipelines.embed.engine``) does not import the step's own
dependencies (the lake, the settings): the public names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.embed.step import EmbedResult, embed_dataset
    from pipelines.embed.tokens import TokenizeResult, tokenize_dataset

_PUBLIC = {
    "EmbedResult": "pipelines.embed.step",
    "embed_dataset": "pipelines.embed.step",
    "TokenizeResult": "pipelines.embed.tokens",
    "tokenize_dataset": "pipelines.embed.tokens",
}

__all__ = ["EmbedResult", "TokenizeResult", "embed_dataset", "tokenize_dataset"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pipelines.embed' has no attribute {name!r}")
