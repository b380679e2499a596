"""Every on-disk format sclake writes, declared once, and the one check its readers make.

Each format is stored with two keys, in the manner of anndata's ``encoding-type`` /
``encoding-version`` attributes: Zarr group attributes, Parquet key-value metadata, or
top-level keys of a JSON or YAML document. Names follow one convention, ``sclake.<name>``;
the hyphenated names that earlier versions wrote (``sclake-dataset``, ...) are read as the
same formats, so data written before stays readable.

Writers take :func:`encoding` (or :func:`parquet_encoding`); readers call :func:`check`,
which refuses an unknown format or version with a message that names what was found and
what this version reads::

    >>> encoding("dataset")
    {'encoding-type': 'sclake.dataset', 'encoding-version': '0.1.0'}
    >>> check("dataset", {"encoding-type": "sclake-dataset", "encoding-version": "0.1.0"}, "x.zarr")
    '0.1.0'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.errors import LakeError


class FormatError(LakeError):
    """A stored object is not the sclake format expected, or a version this sclake does not read."""


@dataclass(frozen=True)
class Format:
    """One on-disk format: its name, the version written now and the versions read."""

    name: str
    version: str
    reads: tuple[str, ...]
    what: str
    legacy_types: tuple[str, ...] = ()

    @property
    def encoding_type(self) -> str:
        return f"sclake.{self.name}"


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("dataset", "0.1.0", ("0.1.0",), "Zarr dataset: zarr/<id>.zarr (attributes)", ("sclake-dataset",)),
        Format("cells-obs", "1", ("1",), "obs table: cells/dataset_id=<id>/obs.parquet (metadata)"),
        Format("tokens", "1", ("1",), "token parts: tokens/<id>/vocab=<hash>/part-*.parquet (metadata)"),
        Format("embeddings", "1", ("1",), "embeddings: embeddings/model=<m>/dataset_id=<id>/part-*.parquet"),
        Format(
            "annotations",
            "1",
            ("1",),
            "annotations: annotations/model=<m>/annotator=<n>/dataset_id=<id>/part-*.parquet",
        ),
        Format(
            "validation",
            "0.1.0",
            ("0.1.0",),
            "validation summary: reports/<id>/validation/validation.json",
            ("sclake-validation",),
        ),
        Format(
            "validated-cells",
            "0.1.0",
            ("0.1.0",),
            "kept cells: reports/<id>/validation/validated_cells.parquet (metadata)",
            ("sclake-validated-cells",),
        ),
        Format(
            "quarantine-reason",
            "0.1.0",
            ("0.1.0",),
            "quarantine reason: quarantine/<id>/reason.json",
            ("sclake-quarantine-reason",),
        ),
        Format("model-manifest", "1", ("1",), "model manifest: sclake-manifest.json beside the model files"),
        Format("resource-profiles", "1", ("1",), "resource profiles: profiles.yaml"),
    )
}
_BY_TYPE = {t: f for f in FORMATS.values() for t in (f.encoding_type, *f.legacy_types)}


def encoding(name: str) -> dict[str, str]:
    """The two keys a writer stores for format ``name``."""
    f = FORMATS[name]
    return {"encoding-type": f.encoding_type, "encoding-version": f.version}


def parquet_encoding(name: str) -> dict[bytes, bytes]:
    """:func:`encoding` as Parquet key-value metadata."""
    return {k.encode(): v.encode() for k, v in encoding(name).items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def check(name: str, attrs: Mapping[Any, Any] | None, where: str, *, error: type[Exception] = FormatError) -> str:
    """Check that ``attrs`` (attributes, Parquet metadata with str or bytes keys, or a JSON
    document) declare format ``name`` in a version this sclake reads; returns the version.

    Raises
    ------
    FormatError
        (or ``error``) Another format, no declaration, or a version not in
        :attr:`Format.reads`; the message names ``where``, what was found and what this
        version reads.
    """
    f = FORMATS[name]
    attrs = attrs or {}
    found_type = _text(attrs.get("encoding-type", attrs.get(b"encoding-type")))
    found_version = _text(attrs.get("encoding-version", attrs.get(b"encoding-version")))
    if found_type is None or _BY_TYPE.get(found_type) is not f:
        raise error(
            f"{where} is not a {f.what.split(':')[0]} (encoding-type {found_type!r}; expected {f.encoding_type!r})"
        )
    if found_version not in f.reads:
        raise error(
            f"{where} is {f.encoding_type} version {found_version!r}; this sclake reads version(s) "
            f"{', '.join(f.reads)}: upgrade sclake to read it, or write it again with this version"
        )
    return found_version
