"""``sclake annotate train / apply / list``: cell-type annotators from a labelled reference's embeddings."""

from __future__ import annotations

import json

import typer

from pipelines.commands import params


def register(app: typer.Typer) -> None:
    annotate_app = typer.Typer(
        help="Cell-type annotation: train an annotator on a labelled reference, apply it to datasets.",
        no_args_is_help=True,
    )
    annotate_app.command("train")(train_cmd)
    annotate_app.command("apply")(apply_cmd)
    annotate_app.command("list")(list_cmd)
    app.add_typer(annotate_app, name="annotate")


def train_cmd(
    reference: str = typer.Option(
        ..., "--reference", help="Dataset id of the labelled reference.", callback=params.dataset_id
    ),
    label: str = typer.Option(..., "--label", help="The obs column holding the cell types, e.g. cell_type."),
    model: str = typer.Option(..., "--model", help="The embedding model the annotator reads."),
    name: str = typer.Option(None, "--name", help="Registered as sclake-annotator-NAME; default: the label."),
    method: str = typer.Option("logreg", "--method", help="logreg (standardise + logistic regression) or knn."),
    holdout: float = typer.Option(0.2, "--holdout", help="Share held out (stratified) for the scores."),
    threshold: float = typer.Option(
        0.5, "--threshold", help="Cells whose top probability is below it are labelled 'unknown'."
    ),
    min_cells: int = typer.Option(10, "--min-cells-per-class", help="Fewest cells a class may have."),
    drop_rare: bool = typer.Option(False, "--drop-rare", help="Leave out classes under --min-cells-per-class."),
    max_cells: int = typer.Option(200_000, "--max-cells", min=100, help="Train on at most N cells (stratified)."),
    neighbors: int = typer.Option(15, "--neighbors", min=1, help="k of the knn method."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the classifier."),
) -> None:
    """Train, evaluate and register an annotator (alias 'champion'); prints a JSON summary.

    New uploads embedded with --model are annotated by every champion from then on.
    """
    from pipelines.annotate import TrainOptions, train_annotator
    from pipelines.settings import get_settings

    try:
        opts = TrainOptions(
            reference=reference, label=label, model=model, name=name, method=method, holdout=holdout,
            threshold=threshold, min_cells_per_class=min_cells, drop_rare=drop_rare, max_cells=max_cells,
            neighbors=neighbors, seed=seed,
        ).checked()  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(json.dumps(train_annotator(get_settings(), opts), indent=2))


def apply_cmd(
    dataset_id: str = typer.Argument(..., help="The dataset to annotate (16 hex digits).", callback=params.dataset_id),
    model: str = typer.Option(None, "--model", help="Its embeddings to read; default: every configured model."),
    annotator: list[str] = typer.Option(None, "--annotator", help="Only this annotator (repeatable); default: all."),
) -> None:
    """Annotate a dataset with the champion annotators now, replacing annotations by older versions.

    New uploads are annotated automatically; use this after registering a new champion, or for a
    dataset embedded before its annotator existed. Prints one JSON line per annotator.
    """
    from pipelines.annotate import AnnotationError, annotate_dataset
    from pipelines.settings import get_settings

    settings = get_settings()
    models = [model] if model else settings.model_list
    done = []
    for m in models:
        try:
            done += annotate_dataset(settings, dataset_id, m, annotators=annotator or None, replace=True)
        except AnnotationError as e:
            if model or annotator or e.code != "no_embeddings":
                raise
    if not done:
        raise AnnotationError(
            f"no champion annotator applies to dataset {dataset_id} (models: {', '.join(models)})",
            "register one with `sclake annotate train`; `sclake annotate list` shows them",
            code="no_annotator",
        )
    for row in done:
        typer.echo(json.dumps(row, default=str))


def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The registered annotators, their champion version and what they read and predict."""
    from pipelines.annotate import list_annotators
    from pipelines.settings import get_settings

    rows = list_annotators(get_settings())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no annotators registered (`sclake annotate train --reference ID --label COLUMN --model MODEL`)")
        return
    header = f"{'annotator':<20} {'champion':>8} {'versions':>8} {'model':<20} {'label':<14} {'classes':>7}  reference"
    typer.echo(header)
    for r in rows:
        champion = f"v{r['champion_version']}" if r["champion_version"] else "-"
        typer.echo(
            f"{r['annotator']:<20} {champion:>8} {r['versions']:>8} {r['model'] or '-':<20} "
            f"{r['label'] or '-':<14} {r['classes'] or 0:>7}  {r['reference'] or '-'}"
        )
