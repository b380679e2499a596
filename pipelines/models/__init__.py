"""Model files: the registry of Geneformer models, synthetic model files, and the offline loader.

Importing this package is cheap: torch, transformers and Helical are imported only by the
functions that need them (``synthesize``, ``load_geneformer``).
"""

from pipelines.models.loader import (
    check_files,
    check_model_files,
    load_gene_mapping,
    load_gene_medians,
    load_geneformer,
    load_token_dictionary,
    model_status,
    read_manifest,
)
from pipelines.models.registry import MODELS, ModelFiles, ModelSpec, get_spec, model_files, model_names
from pipelines.models.synthesize import synthesize

__all__ = [
    "MODELS",
    "ModelFiles",
    "ModelSpec",
    "check_files",
    "check_model_files",
    "get_spec",
    "load_gene_mapping",
    "load_gene_medians",
    "load_geneformer",
    "load_token_dictionary",
    "model_files",
    "model_names",
    "model_status",
    "read_manifest",
    "synthesize",
]
