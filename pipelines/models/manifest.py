"""``manifest.json`` beside a model: what the files are, and their checksums.

sclake writes a manifest next to every model it synthesizes; a model copied in from
Helical's bucket has none. The manifest names the model, its architecture, whether it is
synthetic (random weights) and the SHA-256 of every file Helical reads, so a loader can
tell a complete, intact model from a half-copied one and lineage can say which weights
produced an embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from pipelines import formats
from pipelines.errors import ModelFilesError
from pipelines.models.registry import ModelFiles

ENCODING = formats.encoding("model-manifest")
_CHUNK = 8 * 1024 * 1024

# (path, size, mtime_ns) -> sha256 of files already hashed in this process.
_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (hex), cached per process by path, size and modification time."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def file_entries(files: ModelFiles, paths: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """``{relative name: {"sha256", "bytes"}}`` for ``paths`` (default: every file Helical reads)."""
    entries = {}
    for path in paths if paths is not None else files.required():
        entries[files.relative(path)] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return entries


def read_manifest(files: ModelFiles) -> dict[str, Any] | None:
    """The model's manifest, or ``None`` when it has none (e.g. files copied from Helical's bucket).

    Raises
    ------
    ModelFilesError
        The manifest exists but is not a sclake model manifest this version can read.
    """
    if not files.manifest.is_file():
        return None
    try:
        data = json.loads(files.manifest.read_text())
    except (OSError, ValueError) as e:
        raise ModelFilesError(f"model manifest {str(files.manifest)!r} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise ModelFilesError(f"{str(files.manifest)!r} is not a model manifest (not a JSON object)")
    formats.check("model-manifest", data, repr(str(files.manifest)), error=ModelFilesError)
    return data


def verify_manifest(files: ModelFiles, manifest: dict[str, Any]) -> None:
    """Check every file listed in ``manifest`` against its size and SHA-256.

    Raises
    ------
    ModelFilesError
        Naming the first file that is missing or differs, and the command that rewrites it.
    """
    fix = f"`sclake models synthesize {files.name}{' --tiny' if manifest.get('tiny') else ''} --force`"
    for rel, entry in manifest.get("files", {}).items():
        path = files.models_root / rel
        if not path.is_file():
            raise ModelFilesError(f"model file {str(path)!r} listed in the manifest is missing; {fix} rewrites it")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ModelFilesError(
                f"model file {str(path)!r} has {size} bytes, the manifest says {entry.get('bytes')}; "
                f"it is incomplete or was replaced; {fix} rewrites it"
            )
        actual = file_sha256(path)
        if actual != entry.get("sha256"):
            raise ModelFilesError(
                f"model file {str(path)!r} has sha256 {actual[:12]}..., the manifest says "
                f"{str(entry.get('sha256'))[:12]}...; it was modified or corrupted; {fix} rewrites it"
            )
