"""sclake: single-cell uploads to validated Zarr and foundation-model embeddings in a data lake."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sclake")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
