"""Export the pinned requirements of the compose images from ``uv.lock``.

Every image installs exactly the versions the lock pins, so a step behaves the same in
the Airflow worker, in a worker container and on a developer's machine. ``uv export``
gives the locked set for every platform; this script keeps what Linux x86_64 with
CPython 3.11 installs and writes one file per image:

``requirements-airflow.txt``
    The project's dependencies and the ``deploy-airflow`` group (Celery, FAB, StatsD,
    Postgres driver), with the CPU build of torch.
``requirements-worker-cpu.txt``
    The project's dependencies and the ``deploy-services`` group (Postgres driver for
    the MLflow server, bokeh for the Dask dashboard), with the CPU build of torch.
``requirements-worker-gpu.txt``
    The same set with the lock's torch: PyPI's CUDA build, together with the CUDA
    runtime wheels it depends on (their versions as locked).

The lock takes torch from PyPI, which on Linux x86_64 is the CUDA build. The CPU images
pin ``torch==<locked version>+cpu`` instead (the wheel comes from ``TORCH_WHEELS`` or the
PyTorch CPU index, see ``tools/wheelhouse.py``) and leave out the packages only the CUDA
build needs (``tools/torch_build.py cuda-packages``).
``overrides.txt``
    ``[tool.uv] override-dependencies`` of ``pyproject.toml`` (Helical pins an older
    torch; the project overrides it), passed to ``uv pip install --override``.

Run from the repository root::

    uv run --frozen --no-sync python docker/export_requirements.py          # write the files
    uv run --frozen --no-sync python docker/export_requirements.py --check  # exit 1 if a committed file is stale
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYTHON_FULL_VERSION = "3.11.13"

# The platform every image runs on (PEP 508 marker environment).
TARGET = {
    "implementation_name": "cpython",
    "implementation_version": PYTHON_FULL_VERSION,
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": PYTHON_FULL_VERSION,
    "python_version": "3.11",
    "sys_platform": "linux",
}


@dataclass(frozen=True)
class Image:
    """One requirements file: the dependency groups it adds and the torch build it needs."""

    filename: str
    groups: tuple[str, ...]
    torch: str  # "cpu" or "cuda"
    purpose: str


IMAGES = (
    Image("requirements-airflow.txt", ("deploy-airflow",), "cpu", "the Airflow image (docker/airflow.Dockerfile)"),
    Image(
        "requirements-worker-cpu.txt",
        ("deploy-services",),
        "cpu",
        "the CPU worker image (docker/worker-cpu.Dockerfile)",
    ),
    Image(
        "requirements-worker-gpu.txt",
        ("deploy-services",),
        "cuda",
        "the CUDA worker image (docker/worker.Dockerfile)",
    ),
)
OVERRIDES = "overrides.txt"


# Pythons the images run: the public base's, and Debian bookworm's (the local base). A
# requirement that either needs is kept: e.g. redis needs async-timeout below 3.11.3.
IMAGE_PYTHONS = ("3.11.2", PYTHON_FULL_VERSION)


def _applies(marker: str | None) -> bool:
    if marker is None:
        return True
    envs = ({**TARGET, "python_full_version": v, "implementation_version": v} for v in IMAGE_PYTHONS)
    return any(Marker(marker).evaluate(env) for env in envs)


def uv_export(groups: tuple[str, ...], root: Path = ROOT) -> dict[str, str]:
    """``name -> version`` that ``uv export --frozen`` gives for the target platform, without torch.

    torch and the packages only torch needs are pruned here and added per build by
    :func:`torch_closure`.
    """
    cmd = ["uv", "export", "--frozen", "--no-hashes", "--no-annotate", "--no-header", "--no-emit-project", "--no-dev"]
    for group in groups:
        cmd += ["--group", group]
    cmd += ["--prune", "torch"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)!r} failed: {out.stderr.strip()}")
    pins: dict[str, str] = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        if not _applies(str(req.marker) if req.marker else None):
            continue
        (spec,) = req.specifier
        if spec.operator != "==":
            raise SystemExit(f"uv export gave an unpinned requirement {line!r}")
        pins[req.name] = spec.version
    return pins


def _packages(lock: dict) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for pkg in lock["package"]:
        by_name.setdefault(pkg["name"], []).append(pkg)
    return by_name


def _source_key(source: dict) -> str:
    return next(iter(source.values()))


def _resolve(by_name: dict[str, list[dict]], dep: dict) -> dict:
    candidates = by_name[dep["name"]]
    if "version" in dep:
        candidates = [p for p in candidates if p["version"] == dep["version"]]
    if "source" in dep:
        candidates = [p for p in candidates if _source_key(p["source"]) == _source_key(dep["source"])]
    if len(candidates) != 1:
        raise SystemExit(f"uv.lock has {len(candidates)} entries matching {dep!r}; expected exactly one")
    return candidates[0]


def _torch_build_module():
    """``tools/torch_build.py`` (standard library only), which knows torch's CUDA-only packages."""
    spec = importlib.util.spec_from_file_location("torch_build", ROOT / "tools" / "torch_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_entry(lock: dict) -> dict:
    """The lock's torch entry (PyPI's; on Linux x86_64 the CUDA build)."""
    found = [p for p in lock["package"] if p["name"] == "torch"]
    if len(found) != 1:
        raise SystemExit(f"uv.lock has {len(found)} torch entries; expected one")
    return found[0]


def torch_closure(lock: dict, build: str, root: Path = ROOT) -> dict[str, str]:
    """torch of the given build (``cpu`` or ``cuda``) and everything it needs on the target platform, as locked.

    ``cuda`` is the lock's torch with its CUDA runtime wheels; ``cpu`` is the ``+cpu`` build of
    the same version without the packages only the CUDA build needs.
    """
    if build not in ("cpu", "cuda"):
        raise ValueError(f"torch build {build!r} is not one of 'cpu', 'cuda'")
    pins = _closure(lock, torch_entry(lock))
    if build == "cpu":
        cuda_only = set(_torch_build_module().cuda_packages(root / "uv.lock")) - {"torch"}
        pins = {name: version for name, version in pins.items() if name not in cuda_only}
        pins["torch"] = f"{pins['torch']}+cpu"
    return pins


def _closure(lock: dict, root: dict) -> dict[str, str]:
    by_name = _packages(lock)
    pins: dict[str, str] = {}
    todo = [root]
    while todo:
        pkg = todo.pop()
        if pkg["name"] in pins:
            continue
        pins[pkg["name"]] = pkg["version"]
        deps = list(pkg.get("dependencies", []))
        for dep in deps:
            if not _applies(dep.get("marker")):
                continue
            target = _resolve(by_name, dep)
            todo.append(target)
            for extra in dep.get("extra", []):
                todo.extend(
                    _resolve(by_name, d)
                    for d in target.get("optional-dependencies", {}).get(extra, [])
                    if _applies(d.get("marker"))
                )
    return pins


def image_pins(image: Image, lock: dict, root: Path = ROOT) -> dict[str, str]:
    pins = uv_export(image.groups, root)
    for name, version in torch_closure(lock, image.torch, root).items():
        if pins.setdefault(name, version) != version:
            raise SystemExit(f"{name}: the lock pins {pins[name]} for the project and {version} for torch")
    return dict(sorted(pins.items()))


def render(image: Image, pins: dict[str, str]) -> str:
    torch = pins["torch"]
    source = (
        "TORCH_WHEELS or the PyTorch CPU index (the CPU build of the locked version)"
        if image.torch == "cpu"
        else "PyPI (the lock's CUDA build)"
    )
    head = [
        f"# Pinned requirements of {image.purpose}.",
        "# Generated from uv.lock by docker/export_requirements.py: do not edit by hand.",
        f"# Platform: Linux x86_64, CPython {' or '.join(IMAGE_PYTHONS)}. Groups: {', '.join(image.groups)}.",
        f"# torch=={torch} comes from {source}.",
    ]
    return "\n".join(head + [f"{name}=={version}" for name, version in pins.items()]) + "\n"


def render_overrides(root: Path = ROOT) -> str:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    overrides = pyproject.get("tool", {}).get("uv", {}).get("override-dependencies", [])
    head = [
        "# [tool.uv] override-dependencies of pyproject.toml, for `uv pip install --override`.",
        "# Generated by docker/export_requirements.py: do not edit by hand.",
    ]
    return "\n".join(head + list(overrides)) + "\n"


def exports(root: Path = ROOT) -> dict[str, str]:
    """File name (under ``docker/``) -> content, for every generated file."""
    lock = tomllib.loads((root / "uv.lock").read_text())
    files = {image.filename: render(image, image_pins(image, lock, root)) for image in IMAGES}
    files[OVERRIDES] = render_overrides(root)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args(argv)
    stale = 0
    for name, content in exports().items():
        path = DOCKER / name
        if args.check:
            current = path.read_text() if path.is_file() else ""
            if current != content:
                stale += 1
                sys.stdout.writelines(
                    difflib.unified_diff(current.splitlines(True), content.splitlines(True), str(path), "uv.lock")
                )
        else:
            path.write_text(content)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        fix = "uv run --frozen --no-sync python docker/export_requirements.py"
        print(f"{stale} file(s) disagree with uv.lock: run `{fix}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
