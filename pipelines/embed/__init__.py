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
"""

from pipelines.embed.step import EmbedResult, embed_dataset
from pipelines.embed.tokens import TokenizeResult, tokenize_dataset

__all__ = ["EmbedResult", "TokenizeResult", "embed_dataset", "tokenize_dataset"]
