"""``validate_dataset``: the dataset suites over a published Zarr dataset, reports to the lake."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.dask_cluster import cluster_or_threads
from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake, check_dataset_id
from pipelines.logs import Progress, get_logger
from pipelines.part_blocks import iter_row_blocks, parallel_parts
from pipelines.settings import Settings
from pipelines.validate.aggregates import DatasetFold, PartAccumulator, PartSummary
from pipelines.validate.cell_checks import CellChecks
from pipelines.validate.checks import Inputs, all_limits, run_checks
from pipelines.validate.gx_runner import SuiteRunner
from pipelines.validate.outcome import FAIL, ValidationResult
from pipelines.validate.report import CellsTableWriter, publish
from pipelines.validate.vocabulary import model_vocabulary

log = get_logger(__name__)


def summarise_part(url: str, storage_options: dict[str, Any], part: int) -> PartSummary:
    """Read one Zarr part's counts a block of rows at a time and summarise them (a Dask task: small
    arguments, a result of a few numbers per cell)."""
    from pipelines.dataset import Dataset

    ds = Dataset(url, storage_options)
    acc = PartAccumulator(part, ds.n_vars)
    for _first, block in iter_row_blocks(ds, part):
        acc.add(block)
    return acc.summary()


def map_parts(
    url: str, storage_options: dict[str, Any], parts: list[int], client: Any = None, *, threads: int = 1
) -> Iterator[PartSummary]:
    """Summarise every part, yielding each summary as it is done (in any order): on the Dask ``client``
    when given, else in ``threads`` threads of this process, with at most ``2 * threads`` parts
    submitted and not yet taken, so that finished summaries don't pile up."""
    if not parts:
        return
    progress = Progress("validate", total=len(parts), unit="parts", logger=log)
    if client is not None:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = [
            client.submit(summarise_part, url, storage_options, p, pure=False, key=f"sclake-validate-{token}-{p:05d}")
            for p in parts
        ]
        for fut in as_completed(futures, loop=client.loop):
            summary = fut.result()
            fut.release()
            progress.advance(1)
            yield summary
        progress.finish()
        return
    todo = list(parts)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sclake-validate") as pool:
        running: set[Future] = set()
        while todo or running:
            while todo and len(running) < 2 * threads:
                running.add(pool.submit(summarise_part, url, storage_options, todo.pop(0)))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                progress.advance(1)
                yield fut.result()
    progress.finish()


def part_cell_ids(ds: Any, part: int) -> pa.Array:
    """Cell ids of one part, in row order, as an Arrow string array (missing ids are nulls); only the
    part's obs index is read, not its columns."""
    from anndata.io import read_elem

    obs = ds.part_group(part)["obs"]
    ids = np.asarray(read_elem(obs[obs.attrs.get("_index", "_index")]), dtype=object)
    return pa.array([None if v is None else str(v) for v in ids], pa.string())


def _gene_ids(ds: Any) -> np.ndarray:
    """Ensembl ids when ingest found them (version suffix removed), else the var index as it is."""
    if ds.gene_ids is not None:
        return np.asarray(ds.gene_ids, dtype=object)
    return np.asarray([str(v) for v in ds.var.index], dtype=object)


def _counts_source(ds: Any) -> str:
    """``layers['counts']`` / ``raw.X`` / ``X``: where the counts came from, in the user's terms."""
    src = str(getattr(ds, "counts_source", "X") or "X")
    if src.startswith("layers/"):
        return f"layers[{src.split('/', 1)[1]!r}]"
    return src.replace("/", ".")


def validate_dataset(
    settings: Settings, dataset_id: str, model: str | None = None, *, client: Any = None
) -> ValidationResult:
    """Run the dataset suites on ``zarr/<dataset_id>.zarr`` and publish the results.

    Parameters
    ----------
    settings : Settings
    dataset_id : str
        A dataset ingested into the lake.
    model : str, optional
        The model whose vocabulary the genes are checked against (default: the first of
        ``settings.models``).
    client : distributed.Client, optional
        Compute the per-part summaries on this Dask client (default: the cluster at
        ``SCLAKE_DASK_ADDRESS`` when set, else ``SCLAKE_DASK_WORKERS`` threads of this process).

    Returns
    -------
    ValidationResult
        ``outcome`` is ``pass``, ``pass_with_warnings`` or ``fail`` (with ``code``, ``reason``
        and ``hint``). Failing is a result, not an exception: the caller quarantines.

    Raises
    ------
    LakeError
        The dataset is not in the lake.
    ModelFilesError
        The model's token dictionary is absent.
    """
    from pipelines.dataset import open_dataset

    started = time.perf_counter()
    check_dataset_id(dataset_id)
    model = model or (settings.model_list[0] if settings.model_list else settings.default_model)
    lake = Lake(settings)
    if not lake.is_published(PATHS.zarr(dataset_id)) and lake.exists(f"{PATHS.quarantine(dataset_id)}/reason.json"):
        reason = lake.read_json(f"{PATHS.quarantine(dataset_id)}/reason.json")
        raise LakeError(
            f"dataset {dataset_id!r} is in quarantine ({reason.get('code')}: {reason.get('reason')}); "
            f"fix the file and run `sclake quarantine release {dataset_id}`"
        )
    ds = open_dataset(lake, dataset_id)
    genes, mapping = model_vocabulary(settings, model)
    order = [p.index for p in ds.parts]
    with tempfile.TemporaryDirectory(prefix="sclake-docs-") as tmp:
        docs = Path(tmp) / "docs"
        runner = SuiteRunner(docs)
        cell_checks = CellChecks(runner, dataset_id)
        fold = DatasetFold(ds.n_vars, int(all_limits()["min_genes"]))
        with (
            CellsTableWriter(Path(tmp) / "validated_cells.parquet", order) as table,
            cluster_or_threads(settings, client, parts=len(order)) as cluster,
        ):
            for s in map_parts(ds.url, ds.storage_options, order, cluster, threads=parallel_parts(settings)):
                ids = part_cell_ids(ds, s.part)
                kept = fold.add(s)
                cell_checks.add(s.part, ids, s)
                table.add(s.part, ids, s.total_counts, s.n_genes, kept)
                del s, ids, kept
            cells_table = table.close()
        per_cell, cell_facts = cell_checks.finish(lambda part: part_cell_ids(ds, part))
        inputs = Inputs(
            dataset_id=dataset_id,
            model=model,
            gene_ids=_gene_ids(ds),
            vocabulary=genes,
            mapping=mapping,
            counts_source=_counts_source(ds),
            counts_searched=["layers['counts']", "layers['raw_counts']", "raw.X", "X"],
        )
        result = run_checks(inputs, fold.result(), runner, per_cell, cell_facts)
        runner.build_docs()
        final = PATHS.validation(dataset_id)
        result.report = f"{final}/validation.json"
        result.data_docs = f"{final}/data_docs/index.html"
        result.duration_s = time.perf_counter() - started
        extra: dict[str, Path] = {} if result.outcome == FAIL else {"validated_cells.parquet": cells_table}
        publish(lake, final, result.to_dict(), runner.results_json(), docs, extra)
    log.info("validated %s in %.1fs: %s", dataset_id, result.duration_s, result.summary_line())
    return result
