"""The ``sclake`` command. Each area registers its verbs from ``pipelines.commands.<area>``.

Command modules import only what they need to parse arguments; the steps themselves
(and dask, torch, helical, great_expectations) are imported inside the command bodies.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import sys

import click
import typer

from pipelines.errors import SclakeError

COMMAND_MODULES = (
    "stack",
    "sample",
    "models",
    "ingest",
    "validate",
    "embed",
    "run",
    "query",
    "lineage",
    "demo",
    "compose",
)

app = typer.Typer(
    name="sclake",
    help="Single-cell uploads to validated Zarr and foundation-model embeddings in a data lake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    from pipelines.logs import setup_logging
    from pipelines.settings import get_settings

    setup_logging("DEBUG" if verbose else get_settings().log_level)


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"pipelines.commands.{_name}")
    except ModuleNotFoundError as _e:  # an area not present in this build
        if _e.name != f"pipelines.commands.{_name}":
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a failure prints one line ``sclake: error: <reason>`` and exits non-zero."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        print("sclake: aborted", file=sys.stderr)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except SclakeError as e:
        print(f"sclake: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sclake: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the entry point turns any failure into one line
        logging.getLogger("sclake").debug("unhandled error", exc_info=True)
        reason = str(e).splitlines()[0] if str(e) else ""
        print(f"sclake: error: {type(e).__name__}: {reason} (run with -v for the traceback)", file=sys.stderr)
        return 1
    # Without standalone mode click returns the exit code of `typer.Exit(n)` instead of raising.
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """The ``sclake`` console script."""
    # Registered first, so it runs after every other exit handler: with the objects of
    # anndata, pandas, zarr and distributed loaded, the garbage collections of interpreter
    # shutdown take most of a second after the command's work is done. Frozen objects are
    # still released by reference counting; only the cycle searches over them are skipped.
    atexit.register(gc.freeze)
    sys.exit(main())
