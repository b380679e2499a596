"""``sclake ingest URI``: upload/convert an ``.h5ad``; prints the dataset id.

:func:`upload_argument` reads the ``URI`` argument of ``sclake ingest`` and ``sclake run``
by one rule (``docs/ingest.md``, "What URI means"):

1. ``scheme://...``: a URI (``file://`` a local file, ``s3://bucket/key`` an object; its
   key is normalised and may not leave the bucket);
2. an absolute path or one starting with ``./``, ``../`` or ``~``: a local file, always;
3. any other path naming an existing local file: that file;
4. anything else: a key relative to the lake root (``incoming/x.h5ad``), normalised and
   confined to the lake by :func:`pipelines.lake.lake_key`.

A local file that does not exist is reported under its local path, never as a lake URL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pipelines.settings import Settings

LOCAL_PREFIXES = ("/", "./", "../", "~")


def upload_argument(settings: Settings, arg: str) -> str:
    """What an upload argument names: a URI, an absolute local path, or a lake key (see the module doc).

    Raises
    ------
    InputError
        (code ``not_found``) A local path that is not a file, or a key that is neither a
        local file nor in the lake; the message names the path as given.
    LakeKeyError
        A lake key or ``s3://`` key that resolves outside the lake or its bucket.
    """
    from pipelines.errors import InputError
    from pipelines.lake import Lake, LakeKeyError, lake_key

    if "://" in arg:
        if arg.startswith("s3://"):
            bucket, _, key = arg[len("s3://") :].partition("/")
            try:
                return f"s3://{bucket}/{lake_key(key)}"
            except LakeKeyError as e:
                raise LakeKeyError(f"{arg!r} names no object inside bucket {bucket!r}: {e}") from e
        return arg
    local = Path(arg).expanduser()
    if arg.startswith(LOCAL_PREFIXES) or arg in (".", ".."):
        if not local.is_file():
            what = "is a folder, not a file" if local.is_dir() else "does not exist"
            raise InputError(f"local file {arg!r} {what}", "check the path", code="not_found")
        return str(local.resolve())
    if local.is_file():
        return str(local.resolve())
    key = lake_key(arg)
    lake = Lake(settings)
    if not lake.exists(key):
        raise InputError(
            f"{arg!r} is neither a local file nor a key in the lake {lake.uri!r}",
            "give a local path (./x.h5ad, /abs/x.h5ad), a key under incoming/ that exists, or a URI",
            code="not_found",
        )
    return key


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_cmd(
        uri: Annotated[
            str,
            typer.Argument(
                help="A local .h5ad (absolute, ./ or ../ paths are always local), a file:// or s3:// URI, "
                "or a key in the lake (incoming/x.h5ad)."
            ),
        ],
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the id."),
    ) -> None:
        """Copy an .h5ad to raw/ and convert it to zarr/<dataset_id>.zarr; prints the dataset id."""
        from pipelines.ingest import ingest
        from pipelines.metrics import step_metrics
        from pipelines.settings import get_settings

        settings = get_settings()
        source = upload_argument(settings, uri)
        with step_metrics(settings, "ingest") as m:
            result = ingest(settings, source)
            m.upload("already" if result.already else "ingested")
            m.cells(0 if result.already else result.n_obs)
        if as_json:
            typer.echo(json.dumps(result.summary(), indent=2))
        else:
            typer.echo(result.dataset_id)
