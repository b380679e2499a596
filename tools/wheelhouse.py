"""Fill a wheelhouse for offline image builds: every pinned requirement as a Linux x86_64 CPython 3.11 wheel.

The images install from this folder with ``--no-index`` (``docker/*.Dockerfile``), so no
build step needs the network. Runs on the host, which reaches PyPI (and, where
``TORCH_WHEELS`` has no CPU wheel of torch, the PyTorch CPU index)::

    .venv/bin/python tools/wheelhouse.py build/wheelhouse                          # the CPU images
    .venv/bin/python tools/wheelhouse.py build/wheelhouse --requirements docker/requirements-worker-gpu.txt

Where each wheel comes from:

* a pin of ``uv.lock`` (``docker/requirements-*.txt``): the lock's own file URL and
  SHA-256, the best wheel for the target platform (manylinux up to glibc 2.36, the
  oldest of the bases); a package the lock has only as an sdist is built into a wheel
  here, with ``uv build``, so that images never compile;
* ``torch==<v>+cpu``: ``$TORCH_WHEELS/torch-<v>+cpu-*.whl`` when it lies there, else the
  PyTorch CPU index (``$TORCH_INDEX_URL``);
* anything else (``docker/requirements-build.txt``: uv, hatchling): PyPI's simple API
  (``$PYPI_SIMPLE_URL``), with its SHA-256.

With ``--python VERSION`` the folder also gets a relocatable CPython (``uv python
install``) under ``python/``, for the CUDA base, which has no Python 3.11.

A wheel of a pinned version already in the folder is kept without asking any index, so a
second run (or one on a site without internet, with the folder carried there) only checks. The
Debian ``tini`` package's static binary goes to ``bin/tini`` (``apt-get download``; the
public bases have no tini). The folder ends with ``MANIFEST`` (size and path of each file), which
``make images`` uses to tell whether the wheelhouse image must be rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REQUIREMENTS = (
    "docker/requirements-build.txt",
    "docker/requirements-airflow.txt",
    "docker/requirements-worker-cpu.txt",
)
GLIBC = (2, 36)  # Debian bookworm; Ubuntu 24.04 (the CUDA base) has a newer one


def target_tags() -> list[Tag]:
    """Wheel tags CPython 3.11 on Linux x86_64 with glibc <= ``GLIBC`` installs, best first."""
    platforms = [f"manylinux_{GLIBC[0]}_{minor}_x86_64" for minor in range(GLIBC[1], 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    tags = list(cpython_tags((3, 11), abis=["cp311"], platforms=platforms))
    tags += list(compatible_tags((3, 11), "cp311", platforms=platforms))
    return tags


TAGS = {tag: rank for rank, tag in enumerate(target_tags())}


@dataclass(frozen=True)
class Artifact:
    """One file to fetch: where from, its name, its SHA-256 (when known) and whether it is an sdist."""

    url: str
    filename: str
    sha256: str | None
    size: int | None = None
    sdist: bool = False


def read_pins(paths: list[Path]) -> dict[str, str]:
    """``name -> version`` from requirement files of ``name==version`` lines."""
    pins: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            if not match:
                raise SystemExit(f"{path}: {line!r} is not a `name==version` pin")
            name, version = canonicalize_name(match[1]), match[2]
            if pins.setdefault(name, version) != version:
                raise SystemExit(f"{name} is pinned to both {pins[name]} and {version} ({path})")
    return pins


def best_wheel(filenames: list[str]) -> str | None:
    """The filename whose tags rank best on the target platform, or None when none fits."""
    ranked = []
    for filename in filenames:
        _, _, _, tags = parse_wheel_filename(filename)
        ranks = [TAGS[t] for t in tags if t in TAGS]
        if ranks:
            ranked.append((min(ranks), filename))
    return min(ranked)[1] if ranked else None


def _hash(entry: dict) -> str | None:
    algo, _, digest = entry.get("hash", "").partition(":")
    return digest if algo == "sha256" else None


def from_lock(lock: dict, name: str, version: str) -> Artifact | None:
    """The lock's wheel (or sdist) of ``name==version`` for the target platform."""
    for pkg in lock["package"]:
        if canonicalize_name(pkg["name"]) != name or pkg["version"] != version:
            continue
        wheels = {Path(urllib.parse.urlparse(w["url"]).path).name: w for w in pkg.get("wheels", [])}
        best = best_wheel(list(wheels))
        if best:
            w = wheels[best]
            return Artifact(w["url"], best, _hash(w), w.get("size"))
        if "sdist" in pkg and "url" in pkg["sdist"]:
            s = pkg["sdist"]
            return Artifact(s["url"], Path(urllib.parse.urlparse(s["url"]).path).name, _hash(s), s.get("size"), True)
        raise SystemExit(f"uv.lock has neither a Linux x86_64 CPython 3.11 wheel nor an sdist of {name}=={version}")
    return None


def from_pypi(name: str, version: str) -> Artifact:
    """``name==version`` from PyPI's simple API (JSON form, PEP 691), for packages that are not in the lock."""
    index = os.environ.get("PYPI_SIMPLE_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wheels = {
        f["filename"]: f
        for f in files
        if f["filename"].endswith(".whl") and str(parse_wheel_filename(f["filename"])[1]) == version
    }
    best = best_wheel(list(wheels))
    if not best:
        raise SystemExit(f"{index} has no Linux x86_64 CPython 3.11 wheel of {name}=={version}")
    f = wheels[best]
    return Artifact(f["url"], best, f["hashes"].get("sha256"), f.get("size"))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def torch_cpu(version: str) -> Artifact | Path:
    """The CPU wheel of torch ``version`` (``<v>+cpu``): a file in ``$TORCH_WHEELS``, else the CPU index."""
    local = sorted(Path(os.environ.get("TORCH_WHEELS", "/opt/wheels")).glob(f"torch-{version}-*.whl"))
    local = [p for p in local if best_wheel([p.name])]
    if local:
        return local[0]
    index = os.environ.get("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/torch/", timeout=60) as response:
            parser = _Links()
            parser.feed(response.read().decode())
    except OSError as e:
        raise SystemExit(
            f"torch=={version}: no CPU wheel in TORCH_WHEELS and the index {index!r} cannot be reached ({e})"
        ) from e
    links = {}
    for href in parser.hrefs:
        url = urllib.parse.urljoin(f"{index}/torch/", href)
        filename = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
        if filename.startswith(f"torch-{version}-"):
            links[filename] = url
    best = best_wheel(list(links))
    if not best:
        raise SystemExit(f"{index} has no Linux x86_64 CPython 3.11 wheel of torch=={version}")
    digest = urllib.parse.urlparse(links[best]).fragment.partition("sha256=")[2] or None
    return Artifact(links[best].split("#")[0], best, digest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(artifact: Artifact, folder: Path) -> Path:
    """Download ``artifact`` into ``folder`` (kept when already there with its size), checking its SHA-256."""
    path = folder / artifact.filename
    if path.is_file() and (artifact.size is None or path.stat().st_size == artifact.size):
        return path
    partial = path.with_name(path.name + ".part")
    with urllib.request.urlopen(artifact.url, timeout=300) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    if artifact.sha256 and _sha256(partial) != artifact.sha256:
        partial.unlink()
        raise SystemExit(f"{artifact.url}: SHA-256 differs from {artifact.sha256}")
    partial.replace(path)
    return path


def build_wheel(sdist: Path, folder: Path, name: str, version: str) -> None:
    """Build a wheel from an sdist on this host (``uv build``), unless one of that version is there."""
    prefix = f"{name.replace('-', '_')}-{version}-"
    if any(p.name.lower().startswith(prefix.lower()) for p in folder.glob("*.whl")):
        return
    with tempfile.TemporaryDirectory() as out:
        cmd = [os.environ.get("UV", "uv"), "build", "--no-config", "--wheel", "--python", "3.11", "--out-dir", out]
        r = subprocess.run([*cmd, str(sdist)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"building a wheel of {sdist.name} failed:\n{r.stderr[-2000:]}")
        for wheel in Path(out).glob("*.whl"):
            if not best_wheel([wheel.name]):
                raise SystemExit(f"{sdist.name} built {wheel.name}, which the images cannot install")
            shutil.move(str(wheel), folder / wheel.name)


def fetch_tini(folder: Path) -> None:
    """``bin/tini``: the static tini of Debian's package (``apt-get download``), for bases without tini."""
    target = folder / "bin" / "tini"
    if target.is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", "tini"], cwd=tmp, capture_output=True, text=True, check=False)
        debs = list(Path(tmp).glob("tini_*.deb"))
        if r.returncode != 0 or not debs:
            raise SystemExit(f"apt-get download tini failed (a Debian host with apt lists is needed): {r.stderr}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/x"], check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f"{tmp}/x/usr/bin/tini-static", target)


def fetch_python(folder: Path, version: str) -> None:
    """``python/cpython-<version>-linux-x86_64-gnu``: a relocatable CPython for bases without Python 3.11.

    Made by ``uv python install`` (python-build-standalone; ``UV_PYTHON_INSTALL_MIRROR`` names a mirror).
    """
    target = folder / "python"
    if any(target.glob(f"cpython-{version}-linux-x86_64-gnu")):
        return
    env = {**os.environ, "UV_PYTHON_INSTALL_DIR": str(target.resolve())}
    cmd = [os.environ.get("UV", "uv"), "python", "install", "--no-config", "--no-bin", version]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)!r} failed: {r.stderr.strip()[-2000:]}")
    for extra in target.iterdir():  # uv's lock and cache files: only the interpreter goes into the image
        if not extra.name.startswith("cpython-"):
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()


def write_sums(folder: Path) -> None:
    """``MANIFEST``: size and path of each file of the wheelhouse (enough to spot a change fast)."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "MANIFEST"):
        lines.append(f"{path.stat().st_size} {path.relative_to(folder)}")
    (folder / "MANIFEST").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--requirements",
        action="append",
        type=Path,
        help=f"requirement files (repeatable; default: {', '.join(DEFAULT_REQUIREMENTS)})",
    )
    parser.add_argument(
        "--python",
        metavar="VERSION",
        help="also put a relocatable CPython VERSION under FOLDER/python (for the CUDA base, which has none)",
    )
    args = parser.parse_args(argv)
    folder: Path = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    paths = args.requirements or [ROOT / p for p in DEFAULT_REQUIREMENTS]
    pins = read_pins(paths)
    lock = tomllib.loads((ROOT / "uv.lock").read_text())

    # A wheel of the pinned version already here is kept without asking any index: a wheelhouse
    # carried to a site without internet passes this step offline.
    present = {
        (canonicalize_name(parse_wheel_filename(p.name)[0]), str(parse_wheel_filename(p.name)[1]))
        for p in folder.glob("*.whl")
    }
    artifacts: list[tuple[str, str, Artifact]] = []
    for name, version in pins.items():
        if (name, version) in present:
            continue
        if name == "torch" and version.endswith("+cpu"):
            found = torch_cpu(version)
            if isinstance(found, Path):
                if not (folder / found.name).is_file():
                    shutil.copy2(found, folder / found.name)
                continue
            artifacts.append((name, version, found))
            continue
        artifacts.append((name, version, from_lock(lock, name, version) or from_pypi(name, version)))

    with ThreadPoolExecutor(8) as pool:
        paths_fetched = list(pool.map(lambda a: fetch(a[2], folder), artifacts))
    for (name, version, artifact), path in zip(artifacts, paths_fetched, strict=True):
        if artifact.sdist:
            build_wheel(path, folder, name, version)
            path.unlink()
    fetch_tini(folder)
    if args.python:
        fetch_python(folder, args.python)
    # Wheels no pin asks for any more (an upgrade) leave, so the folder stays the locked set.
    wanted = {canonicalize_name(parse_wheel_filename(p.name)[0]) for p in folder.glob("*.whl")}
    stale = [
        p
        for p in folder.glob("*.whl")
        if canonicalize_name(parse_wheel_filename(p.name)[0]) not in pins
        or str(parse_wheel_filename(p.name)[1]) != pins[canonicalize_name(parse_wheel_filename(p.name)[0])]
    ]
    for p in stale:
        p.unlink()
    write_sums(folder)
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    print(f"{folder}: {len(wanted) - len(stale)} wheels ({size / 2**20:.0f} MiB) for {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
