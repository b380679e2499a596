"""``sclake run`` (every step without Airflow) and ``sclake step`` (one step, for container tasks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

XCOM_DIR = Path("/airflow/xcom")  # where KubernetesPodOperator's sidecar collects a pod's result


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        uri: str = typer.Argument(
            ...,
            help="A local .h5ad (absolute, ./ or ../ paths are always local), a file:// or s3:// URI, "
            "or a key in the lake (incoming/x.h5ad).",
        ),
        model: list[str] = typer.Option(None, "--model", "-m", help="Model(s); default: SCLAKE_MODELS."),
    ) -> None:
        """Ingest + validate + embed + lineage without Airflow; prints a JSON summary."""
        from pipelines.commands.ingest import upload_argument
        from pipelines.orchestration.flowrun import run_upload
        from pipelines.settings import load_settings

        settings = load_settings()
        summary = run_upload(settings, upload_argument(settings, uri), list(model) if model else None)
        typer.echo(json.dumps(summary, indent=2))

    @app.command("step", hidden=True)
    def step_cmd(
        name: str = typer.Argument(..., help="Step name (see pipelines.orchestration.steps.STEPS)."),
        manifest: str = typer.Option(None, "--manifest", help="JSON manifest from the upstream step."),
        values: list[str] = typer.Option(None, "--set", help="k=v arguments of the step."),
    ) -> None:
        """Run one pipeline step and print its JSON result as the last line (container execution modes)."""
        import sys

        from pipelines.orchestration.steps import STEPS
        from pipelines.settings import load_settings

        if name not in STEPS:
            raise typer.BadParameter(f"unknown step {name!r}; known: {', '.join(STEPS)}")
        kwargs: dict[str, object] = dict(v.split("=", 1) for v in (values or []))
        if manifest:
            parsed = json.loads(manifest)
            if name in ("embed", "validate_embeddings", "record_lineage"):
                kwargs = {**{k: parsed[k] for k in ("dataset_id", "model") if k in parsed}, **kwargs}
            else:
                kwargs["manifest"] = parsed
        result = STEPS[name](load_settings(), **kwargs)
        line = json.dumps(result, default=str)
        sys.stderr.flush()
        typer.echo(line)
        if XCOM_DIR.is_dir() and os.access(XCOM_DIR, os.W_OK):
            (XCOM_DIR / "return.json").write_text(line)
