"""The GPU benchmark (``benchmarks/gpu_embed.py``) and what it needs on a machine without sclake's dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--tiny", "--cells", "48", "--part-cells", "32", "--fp32-cells", "8", "--warmup", "4"]


def run_benchmark(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_embed.json"
    cmd = [sys.executable, "benchmarks/gpu_embed.py", *args, "--workdir", str(tmp_path / "w"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    return result


def test_engine_imports_with_torch_and_numpy_only():
    """The inference loop loads without the step's dependencies (settings, lake, pyarrow, pydantic)."""
    code = (
        "import sys\n"
        "from pipelines.embed.engine import Embedder, EngineOptions\n"
        "from pipelines.embed.encoder import load_encoder\n"
        "from pipelines.embed.batching import plan_batches\n"
        "heavy = {'pydantic', 'pyarrow', 'fsspec', 'dask', 'zarr', 'anndata', 'helical', 'scipy'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    # The package's public names still resolve, on first use.
    from pipelines import embed

    assert callable(embed.embed_dataset) and callable(embed.tokenize_dataset)
    with pytest.raises(AttributeError):
        embed.no_such_name  # noqa: B018


@pytest.mark.slow
def test_cpu_run_compares_the_same_cells(tmp_path):
    """On a CPU (fp32) the two loops embed the same tokens and agree; the record has every figure."""
    r = run_benchmark(tmp_path, "--device", "cpu", *SMALL)
    # The same genes in every cell; the order may differ only among genes of equal value (docs/embed.md).
    assert r["prepare"]["same_genes_sequences"] == 48 and r["prepare"]["identical_sequences"] >= 40
    assert r["helical"]["cells"] == r["sclake"]["cells"] == 48
    assert r["sclake"]["precision"] == "fp32"
    assert r["cosine_sclake_to_helical"]["min"] > 0.9999
    assert r["cosine_sclake_to_fp32"]["cells"] == 8 and r["cosine_sclake_to_fp32"]["min"] > 0.9999
    assert r["speedup_vs_helical"] == pytest.approx(r["helical"]["seconds"] / r["sclake"]["seconds"])
    assert r["sclake"]["model_tflops"] > 0 and r["helical"]["peak_gpu_memory_bytes"] is None
    assert r["targets"]["met_cells"] is False  # 48 cells are not the 10,000 the figure needs


def test_object_strings_for_every_anndata():
    """The sample writer stores string index and columns as object arrays (readable by every anndata)."""
    import pandas as pd

    from pipelines.h5ad_writer import _object_strings

    df = pd.DataFrame({"a": pd.array(["x", "y"], dtype="string"), "b": [1, 2]}, index=pd.Index(["c1", "c2"]))
    out = _object_strings(df)
    assert out.index.dtype == object and out["a"].dtype == object and out["b"].dtype == df["b"].dtype
    assert list(out["a"]) == ["x", "y"] and df["a"].dtype == "string"  # the input is left as it was


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_run(tmp_path):
    """On CUDA: bf16 engine against Helical's fp16 loop, peak memory and MFU recorded."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = run_benchmark(tmp_path, "--device", "cuda", *SMALL)
    assert r["sclake"]["precision"] == "bf16" and r["peaks"]["measured_tflops"] > 0
    assert r["sclake"]["peak_gpu_memory_bytes"] > 0 and r["helical"]["peak_gpu_memory_bytes"] > 0
    assert r["cosine_sclake_to_fp32"]["min"] >= 0.99 and r["cosine_sclake_to_helical"]["min"] >= 0.99
