"""Wheels that ``benchmarks/gpu_embed.py`` needs on a GPU machine with no network.

The GPU machine's image has Python 3.12 with torch, transformers, NumPy, pandas, SciPy,
h5py, pyarrow and the other distributions of :data:`IMAGE_HAS`, but not Helical, anndata,
datasets, zarr or sclake's own dependencies. This script finds the distributions the
benchmark really imports (it runs the benchmark here on the CPU with the small test network
and reads the modules loaded at the end), keeps those the image lacks, and downloads them as
binary wheels for the image's Python and platform, at the versions installed here (the
versions the test suite runs with)::

    .venv/bin/python benchmarks/gpu_carry.py [--out build/gpu-carry] [--python-version 3.12]

writes ``<out>/wheels/*.whl`` and ``<out>/carry.json`` (the distributions, versions and
sizes). On the GPU machine, from the repository root (``build/`` travels as an ignored
path)::

    python3 -m pip install --no-index --no-deps --target build/gpu-carry/site build/gpu-carry/wheels/*.whl
    PYTHONPATH=build/gpu-carry/site python3 benchmarks/gpu_embed.py

``--check-python PYTHON`` installs the wheels into a fresh folder for that interpreter and runs
the benchmark on the CPU with them (the way to try the list on a Python environment shaped like
the image).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Distributions in the GPU image's Python (its `pip list`), normalised names.
IMAGE_HAS = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
    execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
    httpcore httpx humanize huggingface-hub hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
    mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
    pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
    pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
    pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
    requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
    tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
    wrapt xarray xxhash yarl zipp
    """.split()
)
# Imported here only because they are installed (optional integrations of anndata, scanpy, torch,
# requests-cache and huggingface_hub); the benchmark runs without them (``--check-python``).
NOT_NEEDED = frozenset(
    """
    sclake pip boto3 botocore jmespath google-auth googleapis-common-protos dask tblib igraph louvain
    leidenalg texttable httpx2 httpcore2 truststore wcwidth itsdangerous pydot sniffio importlib-metadata
    pytz platformdirs
    """.split()
)

SMOKE = ["--device", "cpu", "--tiny", "--cells", "40", "--part-cells", "64", "--fp32-cells", "8", "--warmup", "4"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(python: str = sys.executable) -> dict[str, str]:
    """``{distribution: version}`` of every module loaded by a small CPU run of the benchmark."""
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['gpu_embed.py', *{SMOKE!r}, '--out', sys.argv[1]]\n"
        "runpy.run_path('benchmarks/gpu_embed.py', run_name='__main__')\n"
        "print('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [python, "-c", code, str(Path(tmp) / "r.json")], capture_output=True, text=True, cwd=ROOT, check=False
        )
    if out.returncode != 0:
        raise SystemExit(f"the benchmark's CPU run failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    modules = json.loads(line[len("MODULES ") :])
    owners = metadata.packages_distributions()
    dists = {d for m in modules for d in owners.get(m, [])}
    return {normalise(d): metadata.version(d) for d in dists}


def download(wanted: dict[str, str], wheels: Path, python_version: str) -> None:
    """Binary wheels of ``wanted`` for CPython ``python_version`` on x86-64 Linux (no dependencies)."""
    tag = python_version.replace(".", "")
    pip = [sys.executable, "-m", "pip"] if _has_pip() else ["uvx", "pip"]
    cmd = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels)]
    cmd += ["--python-version", python_version, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3"]
    cmd += ["--abi", "none"]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", plat]
    subprocess.run([*cmd, *(f"{d}=={v}" for d, v in sorted(wanted.items()))], check=True)


def _has_pip() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def check(python: str, wheels: Path) -> None:
    """Install the wheels for ``python`` into a fresh folder and run the benchmark's CPU smoke run with them."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        files = sorted(str(p) for p in wheels.glob("*.whl"))
        install = (
            ["uv", "pip", "install", "--python", python] if shutil.which("uv") else [python, "-m", "pip", "install"]
        )
        subprocess.run([*install, "-q", "--no-index", "--no-deps", "--target", str(site), *files], check=True)
        env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
        cmd = [python, "benchmarks/gpu_embed.py", *SMOKE, "--out", str(Path(tmp) / "r.json")]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"the benchmark failed with the carried wheels:\n{out.stderr[-3000:]}")
        print(
            json.dumps({"check": "ok", "python": python, "result": json.loads(out.stdout.splitlines()[-1])["sclake"]})
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-carry")
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--check-python", default=None, help="an interpreter shaped like the image to try the wheels")
    args = ap.parse_args()
    used = imported_distributions()
    wanted = {d: v for d, v in used.items() if d not in IMAGE_HAS and d not in NOT_NEEDED}
    wheels = args.out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    download(wanted, wheels, args.python_version)
    sizes = {p.name: p.stat().st_size for p in sorted(wheels.glob("*.whl"))}
    record = {"python_version": args.python_version, "distributions": wanted, "wheels": sizes}
    record["total_bytes"] = sum(sizes.values())
    (args.out / "carry.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"wheels": len(sizes), "total_mib": round(record["total_bytes"] / 2**20, 1)}))
    if args.check_python:
        check(args.check_python, wheels)


if __name__ == "__main__":
    main()
