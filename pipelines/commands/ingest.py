"""``sclake ingest URI``: upload/convert an ``.h5ad``; prints the dataset id."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_cmd(
        uri: Annotated[
            str, typer.Argument(help="A local .h5ad, a file:// or s3:// URI, or a key in the lake (incoming/x.h5ad).")
        ],
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the id."),
    ) -> None:
        """Copy an .h5ad to raw/ and convert it to zarr/<dataset_id>.zarr; prints the dataset id."""
        from pipelines.ingest import ingest
        from pipelines.metrics import step_metrics
        from pipelines.settings import get_settings

        settings = get_settings()
        with step_metrics(settings, "ingest") as m:
            result = ingest(settings, uri)
            m.upload("already" if result.already else "ingested")
            m.cells(0 if result.already else result.n_obs)
        if as_json:
            typer.echo(json.dumps(result.summary(), indent=2))
        else:
            typer.echo(result.dataset_id)
