"""``sclake validate DATASET_ID`` and ``sclake quarantine list | show | release``."""

from __future__ import annotations

import json

import typer

from pipelines.commands import params

quarantine_app = typer.Typer(
    help="Uploads refused by ingest or validation, with the reason and what to do.", no_args_is_help=True
)


def validate_cmd(
    dataset_id: str = typer.Argument(
        ..., help="The dataset id printed by `sclake ingest`.", callback=params.dataset_id
    ),
    model: str = typer.Option(None, "--model", "-m", help="Check genes against this model's vocabulary."),
    no_quarantine: bool = typer.Option(False, "--no-quarantine", help="Only report; leave a failing dataset in place."),
    as_json: bool = typer.Option(False, "--json", help="Print the validation summary as JSON."),
) -> None:
    """Run the expectation suites; a failing dataset goes to quarantine and the command exits 1."""
    from pipelines.errors import InputError
    from pipelines.quarantine import quarantine_dataset
    from pipelines.settings import get_settings
    from pipelines.validate import validate_dataset

    settings = get_settings()
    result = validate_dataset(settings, dataset_id, model=model)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.to_dict().items() if k != "checks"}, indent=2, default=str))
    else:
        typer.echo(result.summary_line())
        typer.echo(f"report: {result.report}  data docs: {result.data_docs}")
    if not result.ok:
        where = ""
        if not no_quarantine:
            entry = quarantine_dataset(settings, dataset_id, result)
            where = f" (quarantined: {entry.path})"
        raise InputError(
            f"{dataset_id} failed validation [{result.code}]: {result.reason}{where}",
            result.hint or "",
            code=result.code or "invalid_input",
        )


@quarantine_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every quarantined upload: dataset id, file, reason code and reason."""
    from pipelines.quarantine import list_quarantine
    from pipelines.settings import get_settings

    entries = list_quarantine(get_settings())
    if as_json:
        typer.echo(json.dumps([{**e.__dict__, "path": e.path} for e in entries], indent=2))
        return
    if not entries:
        typer.echo("quarantine is empty")
        return
    header = ("dataset_id", "code", "file", "reason")
    rows = [(e.dataset_id, e.code, e.file, e.reason) for e in entries]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for r in (header, *rows):
        typer.echo("  ".join([*(v.ljust(w) for v, w in zip(r, widths, strict=False)), r[-1]]))


@quarantine_app.command("show")
def show_cmd(
    dataset_id: str = typer.Argument(..., help="A quarantined dataset id.", callback=params.dataset_id),
) -> None:
    """Print the reason.json of a quarantined upload."""
    from pipelines.quarantine import read_reason
    from pipelines.settings import get_settings

    typer.echo(json.dumps(read_reason(get_settings(), dataset_id), indent=2))


@quarantine_app.command("release")
def release_cmd(
    dataset_id: str = typer.Argument(..., help="A quarantined dataset id.", callback=params.dataset_id),
    to: str = typer.Option(None, "--to", help="Lake key under incoming/ to release to (default: incoming/<file>)."),
) -> None:
    """Put the file (fixed in place, or as it is) back into incoming/ so that the pipeline takes it again."""
    from pipelines.quarantine import release
    from pipelines.settings import get_settings

    dest = release(get_settings(), dataset_id, to=to)
    typer.echo(f"released {dataset_id} to {dest}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
    app.add_typer(quarantine_app, name="quarantine")
