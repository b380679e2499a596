"""Fixtures and helpers shared by the validation and quarantine tests.

Test modules import the fixtures (``client_fixture``, ``model_prefix_fixture``) and use them
by their names ``client`` and ``model_prefix``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.settings import Settings

MODEL = "gf-6L-10M-i2048"


@pytest.fixture(scope="module", name="model_prefix")
def model_prefix_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Helical cache prefix holding the tiny synthetic model files of :data:`MODEL`."""
    from pipelines.models import synthesize

    prefix = tmp_path_factory.mktemp("models")
    synthesize(Settings(home=prefix / "home", models_dir=prefix), MODEL, tiny=True)
    return prefix


@pytest.fixture(scope="module", name="client")
def client_fixture() -> Iterator[object]:
    """An in-process Dask cluster shared by the module."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def configured(settings: Settings, model_prefix: Path) -> Settings:
    """Small parts (tiny files still make several), the tiny model, models = [MODEL]."""
    return settings.model_copy(
        update={"part_cells": 64, "shard_cells": 16, "models_dir": model_prefix, "models": MODEL}
    )


def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point ``sclake`` (run in-process) at ``settings``."""
    from pipelines.settings import get_settings

    env = {
        "SCLAKE_HOME": str(settings.home),
        "SCLAKE_LAKE_URI": settings.lake_uri,
        "SCLAKE_MODELS_DIR": str(settings.models_dir),
        "SCLAKE_MODELS": settings.models,
        "SCLAKE_PART_CELLS": str(settings.part_cells),
        "SCLAKE_SHARD_CELLS": str(settings.shard_cells),
    }
    for key in ("s3_endpoint_url", "s3_access_key", "s3_secret_key"):
        if getattr(settings, key):
            env[f"SCLAKE_{key.upper()}"] = str(getattr(settings, key))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    monkeypatch.chdir(settings.home.parent)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``sclake ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    from pipelines.cli import main
    from pipelines.settings import get_settings

    capsys.readouterr()
    try:
        code = main(args)
    finally:
        get_settings.cache_clear()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_sclake", False)]:
            root.removeHandler(handler)  # it writes to the captured stderr, which pytest closes
    out, err = capsys.readouterr()
    return code, out, err
