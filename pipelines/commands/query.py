"""``sclake query SQL`` and ``sclake similar``: DuckDB over the lake's embeddings and cells."""

from __future__ import annotations

import json

import typer

from pipelines.commands import params


def register(app: typer.Typer) -> None:
    app.command("query")(query_cmd)
    app.command("similar")(similar_cmd)


def query_cmd(
    sql: str = typer.Argument(..., help="SQL over the views `embeddings` and `cells`."),
    fmt: str = typer.Option("table", "--format", "-f", help="Output: table, csv or json."),
) -> None:
    """Run SQL with DuckDB over the lake.

    Views: `embeddings` (cell_id, embedding, obs columns, model, dataset_id; committed
    partitions of every model and dataset) and `cells` (cell_id, obs columns, dataset_id).

    Example: sclake query "SELECT model, dataset_id, count(*) FROM embeddings GROUP BY ALL"
    """
    from pipelines.query import FORMATS, run_query
    from pipelines.settings import load_settings

    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    run_query(load_settings(), sql, fmt)


def similar_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model whose embeddings are compared."),
    cell_id: str = typer.Option(..., "--cell-id", "-c", help="The query cell (an obs_name of the h5ad)."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset of the query cell (when ambiguous).", callback=params.dataset_id
    ),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Neighbours to return, the cell itself included."),
    index: str = typer.Option("auto", "--index", help="exact, hnsw, or auto (HNSW if indexed or large)."),
    within_dataset: bool = typer.Option(False, "--within-dataset", help="Search the query cell's dataset only."),
    hnsw_min_rows: int | None = typer.Option(
        None, "--hnsw-min-rows", min=1, help="With --index auto: HNSW from this many cells on [1000000]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Nearest cells by cosine distance of their embeddings; says whether the search was exact or HNSW."""
    from pipelines.settings import load_settings
    from pipelines.similar import HNSW_MIN_ROWS, INDEX_CHOICES, find_similar

    if index not in INDEX_CHOICES:
        raise typer.BadParameter(f"{index!r} is not one of {', '.join(INDEX_CHOICES)}", param_hint="--index")
    result = find_similar(
        load_settings(),
        model,
        cell_id,
        dataset_id=dataset,
        k=k,
        index=index,
        within_dataset=within_dataset,
        hnsw_min_rows=hnsw_min_rows or HNSW_MIN_ROWS,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    typer.echo(result.describe())
    if not result.neighbors:
        return
    columns = list(result.neighbors[0])
    rows = [[_cell(n[c]) for c in columns] for n in result.neighbors]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)
