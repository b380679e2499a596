"""``sclake demo``: the main job, end to end on the embedded stack."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        cells: int = typer.Option(2000, help="Cells in the sample upload."),
        genes: int = typer.Option(8000, help="Genes in the sample upload."),
        seed: int = typer.Option(0, help="Sample seed (another seed is another dataset)."),
        full: bool = typer.Option(False, "--full", help="Synthesize the full-size model instead of the tiny one."),
        timeout: float = typer.Option(900.0, help="Seconds to wait for the DAG runs after the upload."),
    ) -> None:
        """Start the stack, upload a sample, wait for the DAGs, print a DuckDB query of the embeddings."""
        from pipelines.demo import DemoOptions, run_demo

        run_demo(DemoOptions(cells=cells, genes=genes, seed=seed, tiny=not full, timeout=timeout), echo=typer.echo)
