"""``sclake stack up | down | status``: the embedded services."""

from __future__ import annotations

import json

import typer

stack_app = typer.Typer(
    help="The embedded services (S3 server, MLflow, Dask, Airflow, Prometheus) under SCLAKE_HOME.",
    no_args_is_help=True,
)


def _print(rows, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    width = max([28, *(len(r.url) for r in rows)])
    for r in rows:
        pid = f"pid {r.pid}" if r.pid else ""
        typer.echo(f"{r.name:<18} {r.state:<14} {r.url:<{width}} {pid}")


@stack_app.command("up")
def up_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Start the embedded services (idempotent) and print where they listen."""
    from pipelines.settings import load_settings, stack_env_file
    from pipelines.stack import services

    settings = load_settings()
    rows = services.up(settings)
    _print(rows, as_json)
    if not as_json:
        env = services.read_env_file(stack_env_file(settings.home))
        typer.echo(f"\nLake:        {env.get('SCLAKE_LAKE_URI')} at {env.get('SCLAKE_S3_ENDPOINT_URL')}")
        typer.echo(f"S3 keys:     {stack_env_file(settings.home)} (SCLAKE_S3_ACCESS_KEY / SCLAKE_S3_SECRET_KEY)")
        typer.echo(f"MLflow:      {env.get('SCLAKE_MLFLOW_TRACKING_URI')}")
        for extra in services.post_up_notes(settings):
            typer.echo(extra)


@stack_app.command("down")
def down_cmd() -> None:
    """Stop every embedded service and its child processes."""
    from pipelines.settings import load_settings
    from pipelines.stack import services

    stopped = services.down(load_settings())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def status_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show each service's state; exits 1 when one failed or is unhealthy, or the stack is down.

    States: running, unhealthy, failed (started by the last `stack up`, no longer running),
    not started (installed since `stack up`, or left out by SCLAKE_STACK_ONLY: `stack up`
    starts it), stopped (the stack is down), not installed.
    """
    from pipelines.settings import load_settings
    from pipelines.stack import services

    rows = services.status(load_settings())
    _print(rows, as_json)
    if any(r.problem for r in rows) or not any(r.state == "running" for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
