"""``sclake sample PATH``: a realistic synthetic raw-count ``.h5ad``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample_cmd(
        path: Annotated[Path, typer.Argument(help="Output .h5ad file (overwritten).")],
        cells: int = typer.Option(2000, "--cells", min=1, help="Number of cells."),
        genes: int = typer.Option(20_000, "--genes", min=1, max=30_000, help="Number of genes (at most 30,000)."),
        seed: int = typer.Option(0, "--seed", help="Random seed: the same arguments give the same bytes."),
        batch: int = typer.Option(
            0, "--batch", min=0, help="New cells from the same genes and cell-type programs as batch 0 of this seed."
        ),
        layout: str = typer.Option("csr", "--layout", help="X layout: csr (streamed), csc or dense (small files)."),
        counts_in: str = typer.Option("X", "--counts-in", help="Where raw counts go: X, layers or raw."),
        var_ids: str = typer.Option(
            "index", "--var-ids", help="Ensembl ids in the var index, or in a var column: ensembl_id, gene_ids."
        ),
        compress: bool = typer.Option(False, "--compress", help="gzip the count arrays."),
        parents: bool = typer.Option(False, "--parents", help="Create the output's missing parent folders."),
    ) -> None:
        """Write a synthetic raw-count .h5ad (cell types, donors, batches; Ensembl gene ids)."""
        from pipelines.errors import SclakeError
        from pipelines.sample import write_sample

        if not parents and not path.parent.is_dir():
            what = "is not a folder" if path.parent.exists() else "does not exist"
            raise SclakeError(f"folder {str(path.parent)!r} {what}; create it first, or pass --parents")
        try:
            out = write_sample(
                path,
                cells=cells,
                genes=genes,
                seed=seed,
                batch=batch,
                layout=layout,  # type: ignore[arg-type]
                counts_in=counts_in,  # type: ignore[arg-type]
                var_ids=var_ids,  # type: ignore[arg-type]
                compression=compress,
                parents=parents,
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        typer.echo(str(out))
