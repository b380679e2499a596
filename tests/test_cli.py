"""The ``sclake`` entry point: exit status and what a failure prints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

INTERNAL_NAMES = ("UsageError", "BadParameter", "MissingParameter", "NoSuchOption", "ClickException")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``sclake ARGS`` in-process against an empty ``file://`` lake: returns ``(status, stdout, stderr)``."""
    from pipelines.cli import main
    from pipelines.settings import get_settings

    monkeypatch.setenv("SCLAKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCLAKE_LAKE_URI", f"file://{tmp_path / 'lake'}")
    monkeypatch.setenv("SCLAKE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SCLAKE_PUSHGATEWAY_URL", "")
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        finally:
            get_settings.cache_clear()
            root = logging.getLogger()
            for handler in [h for h in root.handlers if getattr(h, "_sclake", False)]:
                root.removeHandler(handler)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_usage_error(result: tuple[int, str, str], usage: str, *expected: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert err.startswith(f"Usage: {usage} "), err
    for text in expected:
        assert text in err
    for name in INTERNAL_NAMES:
        assert name not in err
    assert "Traceback" not in err


def test_unknown_command_is_a_usage_error_listing_the_commands(cli) -> None:
    result = cli("bogus")
    assert_usage_error(result, "sclake", "No such command 'bogus'", "Commands: ", "query", "quarantine")
    assert "step" not in result[2].split("Commands: ")[1]  # hidden commands stay hidden


def test_unknown_subcommand_lists_the_group_commands(cli) -> None:
    commands = "synthesize, list, info, check"
    assert_usage_error(cli("models", "bogus"), "sclake models", "No such command 'bogus'", commands)


def test_bad_choice_shows_usage_and_choices(cli) -> None:
    assert_usage_error(cli("query", "SELECT 1", "--format", "xml"), "sclake query", "'xml'", "table, csv, json")


def test_missing_argument_shows_usage(cli) -> None:
    assert_usage_error(cli("query"), "sclake query", "Missing argument")


def test_unknown_option_shows_usage(cli) -> None:
    assert_usage_error(cli("query", "SELECT 1", "--nope"), "sclake query", "--nope")


@pytest.mark.parametrize(
    ("usage", "args"),
    [
        ("sclake validate", ["validate", "ABC"]),
        ("sclake embed", ["embed", "../../etc"]),
        ("sclake tokenize", ["tokenize", "0123456789abcdeF"]),
        ("sclake lineage", ["lineage", "0123456789abcde"]),
        ("sclake quarantine show", ["quarantine", "show", "x"]),
        ("sclake quarantine release", ["quarantine", "release", "x"]),
        ("sclake annotate apply", ["annotate", "apply", "x"]),
        ("sclake annotate train", ["annotate", "train", "--reference", "x", "--label", "l", "--model", "m"]),
        ("sclake similar", ["similar", "--model", "m", "--cell-id", "c", "--dataset", "x"]),
    ],
)
def test_a_malformed_dataset_id_is_a_usage_error(cli, usage: str, args: list[str]) -> None:
    """Refused while the arguments are read, before any lake or service is asked (the lake here is empty)."""
    assert_usage_error(cli(*args), usage, "is not 16 lowercase hex digits")


def test_a_wellformed_unknown_dataset_id_is_a_one_line_failure(cli) -> None:
    code, _, err = cli("lineage", "0123456789abcdef")
    assert code == 1, err
    assert err.startswith("sclake: error: ") and len(err.strip().splitlines()) == 1, err


def test_help_exits_zero(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "Usage: sclake" in out


def test_failure_is_one_line_and_verbose_shows_the_traceback(cli) -> None:
    code, out, err = cli("query", "SELECT * FROM no_such_table")
    assert code == 1
    assert err.startswith("sclake: error: query failed") and err.count("\n") == 1, err
    assert "Traceback" not in err

    code, _, err = cli("-v", "query", "SELECT * FROM no_such_table")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "QueryError" in err
    assert err.splitlines()[-1].startswith("sclake: error: query failed")


def test_unexpected_error_is_one_line_with_a_hint(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.query

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(pipelines.query, "run_query", broken)
    code, _, err = cli("query", "SELECT 1")
    assert code == 1
    assert err == "sclake: error: RuntimeError: something broke (run with -v for the traceback)\n"
    code, _, err = cli("--verbose", "query", "SELECT 1")
    assert code == 1 and "Traceback (most recent call last)" in err and "second line" in err
    assert err.splitlines()[-1] == "sclake: error: RuntimeError: something broke"


def test_verbose_usage_error_shows_the_traceback_and_the_usage(cli) -> None:
    code, _, err = cli("-v", "bogus")
    assert code == 2 and "Traceback (most recent call last)" in err and "Usage: sclake" in err
