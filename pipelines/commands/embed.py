"""``sclake embed DATASET_ID --model NAME`` and ``sclake tokenize DATASET_ID --model NAME``."""

from __future__ import annotations

import json

import typer

from pipelines.commands import params


def embed_cmd(
    dataset_id: str = typer.Argument(
        ..., help="The dataset id printed by `sclake ingest`.", callback=params.dataset_id
    ),
    model: str = typer.Option(None, "--model", "-m", help="Model name; default: the first of SCLAKE_MODELS."),
    device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA when available), cpu, cuda or cuda:<i>."),
    precision: str = typer.Option(None, "--precision", "-p", help="fp32, bf16 or fp16; default: the profile's."),
    emb_layer: int = typer.Option(-1, "--emb-layer", help="Helical's emb_layer: -1 (last) or 0..layers-1."),
    token_budget: int = typer.Option(None, "--token-budget", help="Padded tokens per batch; default: the profile's."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Tokenise (if needed) and embed the dataset's validated cells; publish one Parquet file per part."""
    from pipelines.embed import embed_dataset
    from pipelines.metrics import step_metrics
    from pipelines.settings import get_settings

    settings = get_settings()
    model = model or settings.model_list[0]
    with step_metrics(settings, "embed", model=model, device=device) as m:
        result = embed_dataset(
            settings,
            dataset_id,
            model,
            device=device,
            precision=precision,
            emb_layer=emb_layer,
            token_budget=token_budget,
        )
        m.set_labels(device=result.device.split(":")[0])
        m.cells(0 if result.reused else result.rows)
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2, default=str))
        return
    if result.reused:
        typer.echo(f"{dataset_id}: embeddings with {model} already published ({result.rows:,} cells)")
    else:
        typer.echo(
            f"{dataset_id}: {result.rows:,} cells embedded with {model} on {result.device} ({result.precision}), "
            f"{result.cells_per_s:,.2f} cells/s, peak RSS {(result.peak_rss_bytes or 0) / 2**20:,.0f} MiB"
        )
    typer.echo(result.prefix)


def tokenize_cmd(
    dataset_id: str = typer.Argument(
        ..., help="The dataset id printed by `sclake ingest`.", callback=params.dataset_id
    ),
    model: str = typer.Option(None, "--model", "-m", help="Model whose vocabulary to use; default: SCLAKE_MODELS."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Store the dataset's rank-value tokens for the model's vocabulary (embed does this when needed)."""
    from pipelines.embed import tokenize_dataset
    from pipelines.settings import get_settings

    settings = get_settings()
    result = tokenize_dataset(settings, dataset_id, model or settings.model_list[0])
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2, default=str))
        return
    state = "already stored" if result.reused else f"{result.cells_per_s:,.0f} cells/s"
    typer.echo(f"{dataset_id}: {result.cells:,} cells, {result.tokens:,} tokens ({state})")
    typer.echo(result.prefix)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.command("tokenize")(tokenize_cmd)
