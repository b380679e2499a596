"""A file three times larger than a memory cgroup's limit is ingested, validated and tokenized inside it.

Each step runs as its own CLI command (a fresh interpreter, its Dask workers included) in a
cgroup whose limit the kernel enforces (``benchmarks/memory_cgroup.py``, root only). The
file is made with the production writer (:class:`pipelines.h5ad_writer.StreamingH5adWriter`)
from one block of ``sclake sample`` cells repeated under new cell ids, which takes seconds
where sampling every cell would take minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

from benchmarks.memory_cgroup import MemoryCgroup, available
from pipelines.h5ad_writer import StreamingH5adWriter
from pipelines.sample import write_sample

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LIMIT = 768 << 20  # the steps' fixed cost (imports, one Dask worker) is about 0.5 GiB
PART_CELLS = 4096  # a quarter of the default: the ingest worker converts one part at a time
BLOCK = 4096  # cells sampled once, then repeated
TOKENIZE = (
    "import json, sys; from pipelines.settings import get_settings; from pipelines.embed.tokens import "
    "tokenize_dataset; r = tokenize_dataset(get_settings(), sys.argv[1], sys.argv[2]); print(r.cells)"
)


def big_file(path: Path, tmp: Path, target_bytes: int) -> int:
    """An ``.h5ad`` of at least ``target_bytes`` bytes of counts; returns its number of cells."""
    block_path = tmp / "block.h5ad"
    write_sample(block_path, cells=BLOCK, genes=20_000, seed=3)
    block = ad.read_h5ad(block_path)
    block_path.unlink()
    x = block.X.tocsr()
    per_block = x.data.nbytes + x.indices.nbytes
    repeats = -(-target_bytes // per_block)
    obs = block.obs.iloc[[i % BLOCK for i in range(BLOCK * repeats)]].copy()
    obs.index = [f"cell-{i:08d}" for i in range(len(obs))]
    with StreamingH5adWriter(path, obs, block.var) as out:
        for _ in range(repeats):
            out.append(x)
    return len(obs)


def run_capped(cg: MemoryCgroup, cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cg.wrap(cmd), env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def cgroup() -> MemoryCgroup:
    reason = available()
    if reason:
        pytest.skip(reason)
    with MemoryCgroup(f"sclake-test-{os.getpid()}", LIMIT) as cg:
        yield cg


def test_three_times_the_limit_runs_inside_it(cgroup: MemoryCgroup, tmp_path: Path, tiny_model: str, models_dir):
    path = tmp_path / "big.h5ad"
    cells = big_file(path, tmp_path, 3 * LIMIT)
    assert path.stat().st_size >= 3 * LIMIT
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_LAKE_URI=f"file://{tmp_path / 'lake'}",
        SCLAKE_HOME=str(tmp_path / "home"),
        SCLAKE_MODELS_DIR=str(models_dir),
        SCLAKE_MODELS=tiny_model,
        SCLAKE_DASK_WORKERS="1",
        SCLAKE_PART_CELLS=str(PART_CELLS),
    )

    # The cap is enforced: anndata, which reads X whole, is killed by it.
    killed = run_capped(
        cgroup, [sys.executable, "-c", "import anndata, sys; anndata.read_h5ad(sys.argv[1])", str(path)], env
    )
    assert killed.returncode in (-9, 137) and cgroup.oom_kills() >= 1, killed.stderr[-2000:]
    kills = cgroup.oom_kills()

    ingest = run_capped(cgroup, [str(BIN / "sclake"), "ingest", str(path), "--json"], env)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    dataset_id = json.loads(ingest.stdout)["dataset_id"]
    validate = run_capped(cgroup, [str(BIN / "sclake"), "validate", dataset_id, "--json", "--model", tiny_model], env)
    assert validate.returncode == 0, validate.stderr[-3000:]
    summary = json.loads(validate.stdout)
    assert summary["outcome"] != "fail" and summary["counts"]["n_cells"] == cells
    tokenize = run_capped(cgroup, [sys.executable, "-c", TOKENIZE, dataset_id, tiny_model], env)
    assert tokenize.returncode == 0, tokenize.stderr[-3000:]
    assert int(tokenize.stdout.split()[-1]) == cells
    assert cgroup.oom_kills() == kills  # nothing of the three steps was killed
    assert cgroup.peak() <= LIMIT
