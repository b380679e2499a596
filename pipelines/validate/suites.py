"""Expectation suites as data: the JSON files in ``schemas/expectations/``.

Each file is a Great Expectations Core 1.x ``ExpectationSuite`` (``name``, ``expectations``
with ``type``/``kwargs``/``meta``/``severity``, ``meta``) over one small aggregate table.
sclake adds to the suite ``meta``:

* ``encoding-type`` / ``encoding-version``: the format of the file;
* ``table``: the aggregate table it validates, and ``columns``: what each column means;
* ``thresholds``: the values the expectations refer to as ``{"$PARAMETER": name}``.

and to each expectation's ``meta`` a ``code`` (the machine-readable failure reason that
``reason.json`` carries) and ``check`` (the check in plain words).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError

SUITE_ENCODING = ("sclake-expectation-suite", "0.1.0")
DATASET_SUITES = ("sclake.obs", "sclake.var", "sclake.cells", "sclake.values")
EMBEDDING_SUITE = "sclake.embeddings"
SCHEMAS_ENV = "SCLAKE_SCHEMAS_DIR"


def schemas_dir() -> Path:
    """The ``schemas/`` folder: ``$SCLAKE_SCHEMAS_DIR``, else the one beside the ``pipelines`` package."""
    env = os.environ.get(SCHEMAS_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "schemas"
    if not (folder / "expectations").is_dir():
        raise ConfigError(
            f"expectation suites not found: {str(folder / 'expectations')!r} is not a folder; "
            f"run from the sclake source tree or set {SCHEMAS_ENV} to its schemas/ folder"
        )
    return folder


def suite_path(name: str) -> Path:
    return schemas_dir() / "expectations" / f"{name}.json"


@lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int) -> str:
    return Path(path).read_text()


def load_suite(name: str) -> dict[str, Any]:
    """The suite ``name`` as a plain dict, checked for sclake's metadata.

    Raises
    ------
    ConfigError
        The file is missing, not JSON, of another encoding, or an expectation lacks a ``code``.
    """
    path = suite_path(name)
    try:
        text = _load(str(path), path.stat().st_mtime_ns)
        suite = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"expectation suite {name!r} not found at {str(path)!r}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"expectation suite {str(path)!r} is not valid JSON: {e}") from None
    meta = suite.get("meta") or {}
    encoding = (meta.get("encoding-type"), meta.get("encoding-version"))
    if encoding != SUITE_ENCODING:
        raise ConfigError(f"expectation suite {str(path)!r} has encoding {encoding!r}; expected {SUITE_ENCODING!r}")
    if suite.get("name") != name:
        raise ConfigError(f"expectation suite {str(path)!r} is named {suite.get('name')!r}; expected {name!r}")
    for i, exp in enumerate(suite.get("expectations") or []):
        if not (exp.get("meta") or {}).get("code"):
            raise ConfigError(f"expectation {i} ({exp.get('type')!r}) of {str(path)!r} has no meta.code")
    return suite


def thresholds(name: str) -> dict[str, Any]:
    """The ``meta.thresholds`` of suite ``name`` (the values its ``$PARAMETER`` references take)."""
    return dict(load_suite(name)["meta"].get("thresholds") or {})


def all_thresholds() -> dict[str, dict[str, Any]]:
    """Thresholds of every dataset suite, by suite name (for reports and docs)."""
    return {name: thresholds(name) for name in DATASET_SUITES}


def gx_suite(name: str) -> Any:
    """A ``great_expectations.ExpectationSuite`` built from the JSON of suite ``name``.

    GX drops an expectation whose configuration it cannot parse (it only logs it); this
    raises :class:`ConfigError` instead, so that a suite never runs with checks missing.
    """
    import great_expectations as gx
    from great_expectations.exceptions import GreatExpectationsError

    data = load_suite(name)
    try:
        suite = gx.ExpectationSuite(
            name=data["name"],
            expectations=data["expectations"],
            meta=dict(data.get("meta") or {}),
            notes=data.get("notes"),
        )
    except (GreatExpectationsError, ValueError, TypeError, KeyError) as e:  # pydantic's errors are ValueErrors
        raise ConfigError(f"expectation suite {str(suite_path(name))!r} is invalid: {e}") from e
    if len(suite.expectations) != len(data["expectations"]):
        raise ConfigError(
            f"expectation suite {str(suite_path(name))!r}: GX accepted {len(suite.expectations)} "
            f"of {len(data['expectations'])} expectations; fix the invalid ones"
        )
    return suite
