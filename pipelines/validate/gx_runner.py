"""Run sclake's expectation suites with Great Expectations Core 1.x and render Data Docs.

Each suite validates one pandas table (the aggregates of :mod:`pipelines.validate.aggregates`, or
one part's cells: :mod:`pipelines.validate.cell_checks`) through a pandas data source, with the
suite's thresholds passed as expectation parameters.
A run uses an in-memory (ephemeral) Data Context with one Data Docs site writing to a
local folder; the caller uploads that folder to the lake. Creating an ephemeral context
takes milliseconds (the cost of GX is its import, paid once per process), and a fresh
context per run keeps runs from seeing each other's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.logs import get_logger
from pipelines.validate.suites import gx_suite

log = get_logger(__name__)

DOCS_SITE = "sclake"


@dataclass(frozen=True)
class CheckResult:
    """One expectation's outcome, in plain data.

    Attributes
    ----------
    suite, expectation : str
        Suite name and GX expectation type.
    code : str
        sclake's failure code (``meta.code`` of the expectation).
    check : str
        The check in plain words (``meta.check``).
    severity : str
        ``"critical"`` (fails the dataset) or ``"warning"`` (recorded; the dataset passes).
    success : bool
    column : str or None
    observed : dict
        ``observed_value``, ``element_count``, ``unexpected_count``, ``unexpected_percent`` and a
        few ``unexpected_examples`` where GX reports them.
    """

    suite: str
    expectation: str
    code: str
    check: str
    severity: str
    success: bool
    column: str | None
    observed: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "expectation": self.expectation,
            "code": self.code,
            "check": self.check,
            "severity": self.severity,
            "success": self.success,
            "column": self.column,
            "observed": self.observed,
        }


def _plain(value: Any) -> Any:
    """numpy scalars and containers as JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _check_result(suite_name: str, res: Any) -> CheckResult:
    config = res.expectation_config
    meta = config.meta or {}
    result = res.result or {}
    observed: dict[str, Any] = {}
    for key in ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count"):
        if key in result:
            observed[key] = _plain(result[key])
    if result.get("partial_unexpected_list"):
        observed["unexpected_examples"] = _plain(list(result["partial_unexpected_list"])[:5])
    if res.exception_info and res.exception_info.get("raised_exception"):
        observed["exception"] = str(res.exception_info.get("exception_message"))
    severity = getattr(config, "severity", None) or "critical"
    return CheckResult(
        suite=suite_name,
        expectation=config.type,
        code=str(meta.get("code", "")),
        check=str(meta.get("check", config.type)),
        severity=str(getattr(severity, "value", severity)),
        success=bool(res.success),
        column=config.kwargs.get("column"),
        observed=observed,
    )


class SuiteRunner:
    """An ephemeral GX Data Context with sclake's suites and a Data Docs site.

    Parameters
    ----------
    docs_dir : Path
        Local folder the Data Docs site is built into.
    """

    def __init__(self, docs_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._gx = gx
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.docs_dir = Path(docs_dir)
        self.context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs_dir)},
            },
        )
        self.source = self.context.data_sources.add_pandas("sclake")
        self.raw: dict[str, Any] = {}
        self._definitions: dict[str, Any] = {}

    def _definition(self, suite_name: str) -> Any:
        """The suite's validation definition over a whole-dataframe batch, made on first use."""
        if suite_name not in self._definitions:
            gx = self._gx
            suite = self.context.suites.add(gx_suite(suite_name))
            asset = self.source.add_dataframe_asset(suite_name.replace(".", "_"))
            batch = asset.add_batch_definition_whole_dataframe("all")
            self._definitions[suite_name] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
            )
        return self._definitions[suite_name]

    def _validate(self, suite_name: str, table: Any, parameters: dict[str, Any] | None, run_name: str) -> Any:
        from great_expectations.core.run_identifier import RunIdentifier

        return self._definition(suite_name).run(
            batch_parameters={"dataframe": table},
            expectation_parameters=dict(parameters or {}),
            result_format="SUMMARY",
            run_id=RunIdentifier(run_name=run_name),
        )

    def run(
        self, suite_name: str, table: Any, parameters: dict[str, Any] | None = None, *, run_name: str = "sclake"
    ) -> list[CheckResult]:
        """Validate a pandas table against suite ``suite_name``; returns one result per expectation."""
        result = self._validate(suite_name, table, parameters, run_name)
        self.raw[suite_name] = result
        return [_check_result(suite_name, r) for r in result.results]

    def run_batch(
        self, suite_name: str, table: Any, parameters: dict[str, Any] | None = None, *, run_name: str
    ) -> tuple[list[CheckResult], dict[str, Any]]:
        """Validate one batch of a table validated in several (its run goes to the Data Docs); returns the
        results and GX's statistics of the run. The caller :meth:`record` s the merged result."""
        result = self._validate(suite_name, table, parameters, run_name)
        return [_check_result(suite_name, r) for r in result.results], _plain(dict(result.statistics))

    def record(self, suite_name: str, merged: dict[str, Any]) -> None:
        """The result of a suite validated in batches, as ``gx_results.json`` gives it."""
        self.raw[suite_name] = merged

    def build_docs(self) -> Path:
        """Render the Data Docs site (suites and this run's validation results); returns its index.html."""
        self.context.build_data_docs(site_names=[DOCS_SITE])
        index = self.docs_dir / "index.html"
        if not index.is_file():
            log.warning("GX wrote no Data Docs index under %s", self.docs_dir)
        return index

    def results_json(self) -> dict[str, Any]:
        """Every suite's full GX validation result as JSON-ready dicts (the merged one for a suite validated
        in batches)."""
        return {name: _plain(res if isinstance(res, dict) else res.to_json_dict()) for name, res in self.raw.items()}
