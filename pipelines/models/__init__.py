"""Model files: the registry of Geneformer models, synthetic model files, and the offline loader."""
