"""``sclake compose env | pools | queues``: helpers of the compose stack (compose/docker-compose.yml)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

compose_app = typer.Typer(help="Helpers of the Docker compose stack (see docs/deployment.md).", no_args_is_help=True)


def _source_root() -> Path:
    """The sclake source tree (the folder holding ``.env.example``), else the working directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / ".env.example").is_file() else Path.cwd()


@compose_app.command("env")
def env_cmd(
    path: Path | None = typer.Option(
        None, "--path", help="Env file to write [default: compose/.env in the source tree]."
    ),
    template: Path | None = typer.Option(
        None, "--template", help="Template [default: .env.example in the source tree]."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Start over: template values and new secrets for everything (a stack's existing "
        "Postgres and MinIO volumes keep the old ones: compose/check-volumes.sh then refuses them).",
    ),
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        min=0,
        help="GPUs of this host: sets SCLAKE_GPU_COUNT, the gpu profile and the CUDA worker image.",
    ),
) -> None:
    """Write compose/.env with generated secrets; keeps the values an existing file has."""
    from pipelines.deploy import ENV_FILE, ENV_TEMPLATE
    from pipelines.envgen import write_env

    root = _source_root()
    result = write_env(path or root / ENV_FILE, template or root / ENV_TEMPLATE, force=force, gpus=gpus)
    typer.echo(f"wrote {result.path} (mode 600)")
    if result.generated:
        typer.echo(f"generated: {', '.join(result.generated)}")
    if result.kept:
        typer.echo(f"kept:      {', '.join(result.kept)}")
    if result.extra:
        typer.echo(f"kept (not in the template): {', '.join(result.extra)}")


@compose_app.command("pools")
def pools_cmd(
    gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs of the host: slots of the GPU pools."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
) -> None:
    """The Airflow pools the DAGs use, as JSON for `airflow pools import`."""
    from pipelines.deploy import airflow_pools
    from pipelines.settings import load_settings

    text = json.dumps(airflow_pools(load_settings(), gpus), indent=2) + "\n"
    if output:
        output.write_text(text)
        typer.echo(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


@compose_app.command("queues")
def queues_cmd() -> None:
    """The Celery queues an Airflow worker consumes, comma-separated (default + the profiles')."""
    from pipelines.deploy import worker_queues

    typer.echo(",".join(worker_queues()))


def register(app: typer.Typer) -> None:
    app.add_typer(compose_app, name="compose")
