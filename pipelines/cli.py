"""The ``sclake`` command. Each area registers its verbs from ``pipelines.commands.<area>``.

Command modules import only what they need to parse arguments; the steps themselves
(and dask, torch, helical, great_expectations) are imported inside the command bodies.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import NoReturn

import typer

from pipelines.errors import SclakeError

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore[no-redef]

COMMAND_MODULES = (
    "stack",
    "sample",
    "models",
    "ingest",
    "uploads",
    "validate",
    "embed",
    "run",
    "query",
    "lineage",
    "annotate",
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


ROOT_FLAGS_VERBOSE = ("-v", "--verbose")


def _verbose(argv: list[str]) -> bool:
    """Whether the root option ``-v``/``--verbose`` comes before the command name.

    Read from the arguments, not from the root callback: a usage error in the command name
    is raised before the callback runs.
    """
    for arg in argv:
        if not arg.startswith("-"):
            return False
        if arg in ROOT_FLAGS_VERBOSE:
            return True
    return False


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _show_usage_error(e: UsageError) -> None:
    """Click's usage line and hint, then the error; for a group, also the commands it has."""
    e.show()
    ctx = e.ctx
    group = ctx.command if ctx is not None else None
    if ctx is not None and hasattr(group, "list_commands") and not isinstance(e, NoArgsIsHelpError):
        names = [n for n in group.list_commands(ctx) if not getattr(group.get_command(ctx, n), "hidden", False)]
        if names:
            print(f"Commands: {', '.join(names)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    0 on success; 2 for a usage error (an unknown command, a bad option value, a missing
    argument), printed with the usage line and what is accepted; 1 for any other failure,
    printed as one line ``sclake: error: <reason>``; 130 when interrupted. With ``-v`` the
    traceback of any failure is printed first.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _verbose(args)
    if not verbose:
        _quiet_helpers()

    def traceback_if_verbose(e: BaseException) -> None:
        if verbose:
            traceback.print_exception(e, file=sys.stderr)

    try:
        rv = app(args=args, prog_name="sclake", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        traceback_if_verbose(e)
        print("sclake: interrupted" if isinstance(e, KeyboardInterrupt) else "sclake: aborted", file=sys.stderr)
        return 130
    except UsageError as e:
        traceback_if_verbose(e)
        _show_usage_error(e)
        return 2
    except ClickException as e:
        traceback_if_verbose(e)
        print(f"sclake: error: {_one_line(e.format_message())}", file=sys.stderr)
        return 1
    except SclakeError as e:
        traceback_if_verbose(e)
        print(f"sclake: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the entry point turns any failure into one line
        traceback_if_verbose(e)
        hint = "" if verbose else " (run with -v for the traceback)"
        unreachable = _unreachable_endpoint(e)
        if unreachable:
            print(f"sclake: error: {unreachable}{hint}", file=sys.stderr)
            return 1
        reason = str(e).splitlines()[0] if str(e) else ""
        print(f"sclake: error: {type(e).__name__}: {reason}{hint}", file=sys.stderr)
        return 1
    # Without standalone mode a command's `typer.Exit(n)` comes back as the return value.
    return rv if isinstance(rv, int) else 0


def _quiet_helpers() -> None:
    """Without -v a failure reaches the user once, as the command's one line.

    Dask workers would print each failed task ("Compute Failed" with its traceback), asyncio
    the exceptions its cancelled S3 requests leave behind, and multiprocessing's resource
    tracker its leak warnings at exit; all of them are shown with -v.
    """
    import logging
    import os

    from pipelines import logs

    logs.QUIET_WORKERS = True  # read by pipelines.dask_cluster (clusters this process starts)
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _unreachable_endpoint(error: BaseException) -> str | None:
    """One line for an object store or tracking server that does not answer, or None.

    Names the endpoint and what to do; the error may have come back from a Dask worker.
    """
    import os
    import re

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        name = type(e).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
            isinstance(e, ConnectionError) and "http" in text
        ):
            m = re.search(r"https?://[^/\s\"']+", text)
            endpoint = m.group(0) if m else os.environ.get("SCLAKE_S3_ENDPOINT_URL", "the S3 endpoint")
            return (
                f"cannot reach {endpoint} ({name}): start the server (the embedded stack: `sclake stack up`) "
                "or set SCLAKE_S3_ENDPOINT_URL / SCLAKE_MLFLOW_TRACKING_URI to one that answers, then run the "
                "command again (finished work is kept)"
            )
        e = e.__cause__ or e.__context__
    return None


def run() -> None:
    """The ``sclake`` console script."""
    # No gc.freeze() at exit to save the shutdown's cycle collections: after an S3 step
    # (aiobotocore's loop objects, h5py's) the interpreter then crashed in its finalization
    # (SIGSEGV, exit 139) once the command had already printed its result.
    code = main()
    if code == 1:
        # A failed command has printed its one line and cleaned up in its own `with` blocks. Its
        # exit skips the interpreter's finalization: there, on a busy machine, a C++ thread of the
        # native libraries (pyarrow's file systems among them) was still running when the
        # process tore down, and it died with SIGABRT ("terminate called without an active
        # exception", exit 134) instead of exit 1.
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _leave(code)


def _leave(code: int) -> NoReturn:
    """Exit with ``code`` as the interpreter does, less its teardown of every loaded module.

    That teardown frees each module's objects one by one, which nothing needs (the process's
    memory goes back to the system at once): after ``sclake ingest`` of a 50,000-cell upload
    from S3 (dask, zarr, pandas, botocore loaded) it took 0.8-0.9 s of the command's time.
    What an exit must do still runs, in the interpreter's own order: other (non-daemon)
    threads are waited for, the ``atexit`` handlers run (logging's flush, multiprocessing's
    clean-up of its helper processes, ...), and the standard streams are flushed.
    """
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # CPython's first step at exit
    if shutdown is None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
