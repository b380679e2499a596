"""Argument checks shared by the command modules: a bad value is a usage error (exit 2, with
the usage line), found before any step starts or any service is asked."""

from __future__ import annotations

import typer

from pipelines.lake_layout import check_dataset_id


def dataset_id(value: str | None) -> str | None:
    """Typer callback of every dataset-id argument and option (``None``: an option not given)."""
    if value is None:
        return None
    try:
        return check_dataset_id(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
