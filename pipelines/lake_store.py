"""Which store a lake URI names, and the fsspec options that reach it (used by :class:`pipelines.lake.Lake`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.settings import Settings


def s3_storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec/s3fs options for the configured S3 endpoint.

    Checksums are computed and validated only when required: S3-compatible servers
    (rclone's, some MinIO releases) send the whole object's checksum on ranged reads,
    which current botocore would reject.
    """
    opts: dict[str, Any] = {
        "config_kwargs": {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"addressing_style": "path"},
        },
        "client_kwargs": {"region_name": settings.s3_region},
    }
    if settings.s3_endpoint_url:
        opts["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key:
        opts["key"] = settings.s3_access_key
        opts["secret"] = settings.s3_secret_key or ""
    else:
        opts["anon"] = False
    return opts


def split_lake_uri(uri: str) -> tuple[str, str]:
    """``(protocol, root)``; ``root`` has no scheme and no trailing slash."""
    if uri.startswith("s3://"):
        return "s3", uri[len("s3://") :].strip("/")
    if uri.startswith("file://"):
        return "file", str(Path(uri[len("file://") :]).resolve())
    if "://" in uri:
        raise ConfigError(f"lake URI {uri!r} has an unsupported scheme; use s3://bucket[/prefix] or file:///abs/path")
    return "file", str(Path(uri).expanduser().resolve())
