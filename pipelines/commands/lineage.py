"""``sclake lineage DATASET_ID``: upload key → raw file → Zarr → validation → embeddings → MLflow runs."""

from __future__ import annotations

import json

import typer

from pipelines.commands import params


def register(app: typer.Typer) -> None:
    app.command("lineage")(lineage_cmd)


def lineage_cmd(
    dataset_id: str = typer.Argument(
        ..., help="The dataset id (16 hex digits, printed by `sclake ingest`).", callback=params.dataset_id
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show where a dataset came from and what was made of it, with the MLflow run ids.

    Read from the lake alone (commit markers, Zarr attributes, validation reports, Parquet
    metadata and the lineage records the MLflow runs left there).
    """
    from pipelines.errors import InputError
    from pipelines.lineage import dataset_lineage, render_lineage
    from pipelines.settings import load_settings

    try:
        chain = dataset_lineage(load_settings(), dataset_id)
    except ValueError as e:
        raise InputError(str(e), "pass the id `sclake ingest` printed", code="bad_dataset_id") from e
    typer.echo(json.dumps(chain, indent=2, default=str) if as_json else render_lineage(chain))
