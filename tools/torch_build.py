"""Which packages of ``uv.lock`` belong to torch's CUDA build, and the CPU wheel of the locked version.

``uv.lock`` takes torch from PyPI, which on Linux x86_64 is a CUDA build that pulls in
about 3 GB of CUDA runtime wheels (``nvidia-*``, ``cuda-*``, ``triton``). A CPU-only
install (``make setup TORCH=cpu``) syncs everything else from the lock and installs the
CPU build of the *same* torch version instead::

    python3 tools/torch_build.py no-install-args   # --no-install-package torch --no-install-package triton ...
    python3 tools/torch_build.py version           # 2.13.0
    python3 tools/torch_build.py cuda-packages     # one name a line

Only the standard library is used: it runs before the project's environment exists.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"


def _packages(lock: Path = LOCK) -> dict[str, dict]:
    return {p["name"]: p for p in tomllib.loads(lock.read_text())["package"]}


def torch_version(lock: Path = LOCK) -> str:
    """The torch version the lock pins (one version on every platform)."""
    versions = {p["version"] for p in tomllib.loads(lock.read_text())["package"] if p["name"] == "torch"}
    if len(versions) != 1:
        raise SystemExit(f"uv.lock pins torch as {sorted(versions)!r}; expected exactly one version")
    return versions.pop()


def cuda_packages(lock: Path = LOCK) -> list[str]:
    """torch and the packages only its CUDA build needs.

    These are torch's Linux-only dependencies (the CPU wheel has none) and whatever only
    they, in turn, depend on.
    """
    pkgs = _packages(lock)
    users: dict[str, set[str]] = {}
    for p in pkgs.values():
        deps = list(p.get("dependencies", []))
        for group in p.get("optional-dependencies", {}).values():
            deps += group
        for dep in deps:
            users.setdefault(dep["name"], set()).add(p["name"])
    cuda = {
        d["name"] for d in pkgs["torch"].get("dependencies", []) if "sys_platform == 'linux'" in d.get("marker", "")
    }
    changed = True
    while changed:
        changed = False
        for name, by in users.items():
            if name not in cuda and by and by <= cuda:
                cuda.add(name)
                changed = True
    return sorted(cuda | {"torch"})


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else ""
    if what == "version":
        print(torch_version())
    elif what == "cuda-packages":
        print("\n".join(cuda_packages()))
    elif what == "no-install-args":
        print(" ".join(f"--no-install-package {name}" for name in cuda_packages()))
    else:
        print("usage: torch_build.py version | cuda-packages | no-install-args", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
