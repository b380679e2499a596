"""Write the compose stack's ``compose/.env`` from ``.env.example`` with generated secrets.

``.env.example`` is committed and holds the placeholder ``change-me`` for every secret.
:func:`write_env` copies it line by line (comments and order kept), fills each secret
with a value from :mod:`secrets`, and keeps every value an existing ``.env`` already has,
so running it again never rotates a secret that Postgres or MinIO has already stored.
``force=True`` starts over from the template with new secrets.

The module needs nothing outside the standard library, so a server without sclake's
environment can run it too::

    python3 -m pipelines.envgen [--path compose/.env] [--force] [--gpus N]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import ConfigError

PLACEHOLDER = "change-me"
_ALNUM = string.ascii_letters + string.digits
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def _password() -> str:
    # Letters and digits only: these go into database and broker URLs unquoted.
    return "".join(secrets.choice(_ALNUM) for _ in range(32))


def _token() -> str:
    return secrets.token_urlsafe(48)


def fernet_key() -> str:
    """A Fernet key as Airflow requires: urlsafe base64 of 32 random bytes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def _stack_id() -> str:
    return secrets.token_hex(16)


GENERATORS = {"password": _password, "token": _token, "fernet": fernet_key, "id": _stack_id}

# Every secret of the stack and how it is generated. SCLAKE_STACK_ID is no secret: the
# volumes that keep the others (Postgres' and MinIO's) are labelled with it, so that a stack
# never starts on volumes made with other secrets (compose/check-volumes.sh).
SECRETS: dict[str, str] = {
    "SCLAKE_STACK_ID": "id",
    "MINIO_ROOT_PASSWORD": "password",
    "SCLAKE_S3_SECRET_KEY": "password",
    "MLFLOW_S3_SECRET_KEY": "password",
    "POSTGRES_PASSWORD": "password",
    "AIRFLOW_DB_PASSWORD": "password",
    "MLFLOW_DB_PASSWORD": "password",
    "REDIS_PASSWORD": "password",
    "AIRFLOW_ADMIN_PASSWORD": "password",
    "AIRFLOW_FERNET_KEY": "fernet",
    "AIRFLOW_JWT_SECRET": "token",
    "AIRFLOW_API_SECRET_KEY": "token",
    "GRAFANA_ADMIN_PASSWORD": "password",
}


@dataclass
class EnvResult:
    """What :func:`write_env` did: the file and the keys it generated, kept or added."""

    path: Path
    generated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped, one level of quotes removed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def gpu_values(gpus: int, template: dict[str, str], profiles: str = "") -> dict[str, str]:
    """Values that switch the stack between CPU-only and ``gpus`` GPUs.

    ``profiles`` (the current ``COMPOSE_PROFILES``) keeps its other profiles; ``gpu`` is
    added for ``gpus > 0``, and ``gpu``/``dask-gpu`` are removed for ``gpus == 0``.
    """
    if gpus < 0:
        raise ConfigError(f"--gpus {gpus!r}: the number of GPUs must be 0 or more")
    keep = [p.strip() for p in profiles.split(",") if p.strip() and p.strip() not in ("gpu", "dask-gpu")]
    if gpus:
        keep = ["gpu", *keep, *(["dask-gpu"] if "dask-gpu" in profiles.split(",") else [])]
    return {
        "SCLAKE_GPU_COUNT": str(gpus),
        "COMPOSE_PROFILES": ",".join(keep),
        "SCLAKE_WORKER_IMAGE": template["SCLAKE_WORKER_CUDA_IMAGE" if gpus else "SCLAKE_WORKER_CPU_IMAGE"],
    }


def _is_unset(value: str | None) -> bool:
    return value is None or value == "" or value == PLACEHOLDER


def write_env(path: Path, template: Path, *, force: bool = False, gpus: int | None = None) -> EnvResult:
    """Write ``path`` from ``template``, generating every secret that has no value yet.

    Parameters
    ----------
    path
        The env file to write (``compose/.env``); created with mode 0600.
    template
        ``.env.example``: its lines, comments and order are kept.
    force
        Ignore an existing ``path``: every value from the template, every secret new.
    gpus
        When given, set the GPU count, the ``gpu`` profile and the worker image for that many GPUs.

    Returns
    -------
    EnvResult
        The keys generated, kept from the existing file, and kept although the template lacks them.
    """
    if not template.is_file():
        raise ConfigError(
            f"env template {str(template)!r} not found: run from the sclake source tree or pass --template"
        )
    lines = template.read_text().splitlines()
    defaults = parse_env("\n".join(lines))
    missing = sorted(set(SECRETS) - set(defaults))
    if missing:
        raise ConfigError(f"env template {str(template)!r} lacks the secrets {missing!r}")
    existing = {} if force or not path.is_file() else parse_env(path.read_text())
    profiles = existing.get("COMPOSE_PROFILES", defaults.get("COMPOSE_PROFILES", ""))
    overrides = gpu_values(gpus, defaults, profiles) if gpus is not None else {}

    result = EnvResult(path=path)
    out: list[str] = []
    for line in lines:
        m = _LINE.match(line) if not line.lstrip().startswith("#") else None
        if not m:
            out.append(line)
            continue
        key = m.group(1)
        if key in overrides:
            value = overrides[key]
        elif key in SECRETS:
            if _is_unset(existing.get(key)):
                value = GENERATORS[SECRETS[key]]()
                result.generated.append(key)
            else:
                value = existing[key]
                result.kept.append(key)
        else:
            value = existing.get(key, defaults[key])
        result.values[key] = value
        out.append(f"{key}={value}")
    extra = {k: v for k, v in existing.items() if k not in defaults}
    if extra:
        out += ["", "# ---- kept from the previous file (not in the template)"]
        out += [f"{k}={v}" for k, v in extra.items()]
        result.extra = list(extra)
        result.values.update(extra)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python3 -m pipelines.envgen``: the same as ``sclake compose env``."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(prog="python3 -m pipelines.envgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=root / "compose" / ".env", help="env file to write")
    parser.add_argument("--template", type=Path, default=root / ".env.example", help="the template")
    parser.add_argument("--force", action="store_true", help="start over: template values and new secrets")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs of this host (gpu profile, CUDA worker image)")
    args = parser.parse_args(argv)
    try:
        result = write_env(args.path, args.template, force=args.force, gpus=args.gpus)
    except ConfigError as e:
        print(f"envgen: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result.path} (mode 600)")
    labels = {"generated": result.generated, "kept": result.kept, "kept, not in the template": result.extra}
    for label, keys in labels.items():
        if keys:
            print(f"{label}: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
