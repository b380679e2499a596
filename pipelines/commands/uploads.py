"""``sclake uploads``: what lies under ``incoming/`` and what will happen to it."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("uploads")
    def uploads_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Files under incoming/: uploads waiting to be ingested, and files that are not ingested, with why."""
        from pipelines.lake import Lake
        from pipelines.orchestration.uploads import scan_incoming
        from pipelines.settings import load_settings

        lake = Lake(load_settings())
        uploads, skipped = scan_incoming(lake)
        waiting = "an .h5ad upload: the next ingestion run takes it"
        rows = [{"key": k, "state": "waiting", "why": waiting} for k in uploads]
        rows += [{"key": k, "state": "skipped", "why": why} for k, why in skipped.items()]
        rows.sort(key=lambda r: r["key"])
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"nothing under {lake.url('incoming/')}")
            return
        width = max(len(r["key"]) for r in rows)
        typer.echo(f"{'key':<{width}}  {'state':<8}  why")
        for r in rows:
            typer.echo(f"{r['key']:<{width}}  {r['state']:<8}  {r['why']}")
