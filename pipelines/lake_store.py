"""Which store a lake URI names, the fsspec options that reach it, and synchronous S3 clients for them.

Used by :class:`pipelines.lake.Lake` and the remote reader of :mod:`pipelines.ingest.remote`.
"""

from __future__ import annotations

import json
import threading
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


_lock = threading.Lock()
_session: Any = None
_clients: dict[str, Any] = {}


def s3_client(storage_options: dict[str, Any], *, read_timeout: float | None = None) -> Any:
    """A synchronous botocore S3 client for s3fs-style ``storage_options``; one per distinct options.

    Understood: ``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``, ``profile``,
    ``client_kwargs`` (given to ``create_client``) and ``config_kwargs`` (a botocore
    ``Config``), which is what :func:`s3_storage_options` writes. ``read_timeout`` (seconds)
    replaces the options' own, for requests that answer only once the server is done (a
    large CopyObject). botocore clients are thread-safe, so the process's threads share them.
    """
    if read_timeout is not None:
        config = {**(storage_options.get("config_kwargs") or {}), "read_timeout": read_timeout}
        storage_options = {**storage_options, "config_kwargs": config}
    token = json.dumps(storage_options, sort_keys=True, default=str)
    with _lock:
        client = _clients.get(token)
        if client is None:
            client = _clients[token] = _new_client(storage_options)
    return client


def http_status(error: Any) -> int:
    """The HTTP status of a botocore ``ClientError`` (0 when the answer had none)."""
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _new_client(opts: dict[str, Any]) -> Any:
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    global _session
    if opts.get("profile"):
        session = botocore.session.Session(profile=opts["profile"])
    else:
        if _session is None:
            _session = botocore.session.get_session()
        session = _session
    config_kwargs = dict(opts.get("config_kwargs") or {})
    config_kwargs.setdefault("retries", {"max_attempts": 5, "mode": "standard"})
    if opts.get("anon"):
        config_kwargs["signature_version"] = UNSIGNED
    kwargs: dict[str, Any] = {"config": Config(**config_kwargs)}
    if opts.get("endpoint_url"):
        kwargs["endpoint_url"] = opts["endpoint_url"]
    if opts.get("key"):
        kwargs["aws_access_key_id"] = opts["key"]
        kwargs["aws_secret_access_key"] = opts.get("secret") or ""
        if opts.get("token"):
            kwargs["aws_session_token"] = opts["token"]
    kwargs.update(opts.get("client_kwargs") or {})
    return session.create_client("s3", **kwargs)
