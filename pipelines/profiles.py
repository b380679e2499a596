"""Resource profiles: how much of which machine each model needs (``pipelines/config/profiles.yaml``).

One profile per model. The embedding engine takes its device, precision and batch size
from the profile (:meth:`Profile.compute_for`, which reads what this machine supports
through :func:`resolve_device` and :func:`bf16_support`: on CPU, the flags the kernel
reports in ``/proc/cpuinfo``), Dask its
resource tags and memory cap, Airflow its pool and queue, and the worker containers their
limits, so that a model's needs are written down once.

Example
-------
>>> p = get_profile("gf-6L-10M-i2048")
>>> p.precision_for("cuda:0", bf16_supported=False)
'fp16'
>>> p.precision_for("cpu", bf16_supported=cpu_bf16_support({"avx2", "avx512_bf16"}).supported)
'bf16'
>>> p.token_budget_for("cpu") // p.input_size  # cells per batch on a CPU
8
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from pipelines import formats
from pipelines.errors import ConfigError

PROFILES_FILE = Path(__file__).with_name("config") / "profiles.yaml"
PROFILES_ENV = "SCLAKE_PROFILES"  # path of a site's own profiles file, replacing the packaged one
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_KINDS = ("cpu", "gpu")

Precision = Literal["fp32", "bf16", "fp16"]
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_UNITS["tib"], _UNITS["tb"] = 2**40, 10**12


def parse_bytes(value: object) -> int:
    """Bytes from an int or a string such as ``"1.5 GiB"`` / ``"512MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is not a number of bytes")
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"size {value!r} is not bytes or a number with a unit ({', '.join(sorted(_UNITS)[1:])})")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]


def device_kind(device: str) -> Literal["cpu", "gpu"]:
    """``"cpu"`` or ``"gpu"`` for a torch device string (``cpu``, ``cuda``, ``cuda:1``) or a device class."""
    d = str(device).strip().lower()
    if d == "cpu" or d.startswith("cpu:"):
        return "cpu"
    if d in ("gpu", "cuda") or d.startswith("cuda:"):
        return "gpu"
    raise ConfigError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:<index>'")


def resolve_device(device: str | None) -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>``; ``None``/``auto``: CUDA when available, else CPU."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "gpu":
        d = "cuda"
    if d != "cpu" and not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
        raise ConfigError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no CUDA device here; use --device cpu")
    return d


CPUINFO = Path("/proc/cpuinfo")
# x86 flags (as /proc/cpuinfo names them) of instructions that compute bf16 matrix products in
# hardware: AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Bf16Support:
    """Whether a device computes bf16 in hardware, and what says so (or why not), in words."""

    supported: bool
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from the ``flags`` lines of ``/proc/cpuinfo`` (or of the text ``cpuinfo``).

    ``None`` where ``/proc/cpuinfo`` cannot be read (not Linux).
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_support(flags: frozenset[str] | set[str] | None = None) -> Bf16Support:
    """bf16 on this CPU, decided from its flags (``flags``: given, else read by :func:`cpu_flags`).

    Without bf16 instructions torch still computes bf16, but by converting to fp32 in
    software: many times slower than fp32 itself, so bf16 is then neither the default
    nor allowed. Where ``/proc/cpuinfo`` is unreadable, torch's own oneDNN check decides.
    """
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        import torch

        try:
            onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            onednn = False
        return Bf16Support(onednn, f"no /proc/cpuinfo; torch's oneDNN {'reports' if onednn else 'lacks'} bf16")
    present = [f for f in CPU_BF16_FLAGS if f in flags]
    if present:
        return Bf16Support(True, f"CPU flags {', '.join(present)}")
    return Bf16Support(
        False,
        f"this CPU has no bf16 hardware (/proc/cpuinfo lists neither {' nor '.join(CPU_BF16_FLAGS)}; "
        "torch would emulate bf16, many times slower than fp32)",
    )


def cpu_has_amx(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU has AMX tiles with bf16 (Sapphire Rapids and later), from its flags."""
    if flags is None:
        flags = cpu_flags()
    return flags is not None and {"amx_tile", "amx_bf16"} <= set(flags)


def bf16_support(device: str, *, flags: frozenset[str] | set[str] | None = None) -> Bf16Support:
    """Whether ``device`` computes in bfloat16 at full speed (CUDA: Ampere or later; CPU: :func:`cpu_bf16_support`)."""
    if device_kind(device) == "cpu":
        return cpu_bf16_support(flags)
    import torch

    if torch.cuda.is_bf16_supported():
        return Bf16Support(True, f"{torch.cuda.get_device_name(device)} computes bf16")
    return Bf16Support(False, "this GPU has no bf16 (compute capability below 8.0)")


def bf16_supported(device: str, *, flags: frozenset[str] | set[str] | None = None) -> bool:
    """:func:`bf16_support` as a bool."""
    return bf16_support(device, flags=flags).supported


@dataclass(frozen=True)
class Compute:
    """Where and how one run computes: the torch device, its precision and the padded tokens per batch."""

    device: str
    precision: Precision
    token_budget: int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrecisionRules(_Strict):
    """Compute precision by device kind."""

    cuda_bf16: Precision = "bf16"
    cuda: Literal["fp16", "fp32"] = "fp16"
    cpu: Literal["fp32", "bf16"] = "fp32"
    cpu_allowed: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")

    @model_validator(mode="after")
    def _cpu_default_allowed(self) -> PrecisionRules:
        if self.cpu not in self.cpu_allowed:
            raise ValueError(f"cpu precision {self.cpu!r} is not in cpu_allowed {list(self.cpu_allowed)}")
        return self


class TokenBudget(_Strict):
    """Tokens (cells x padded length) per forward batch, by device kind."""

    cpu: int = Field(gt=0)
    gpu: int = Field(gt=0)


class AirflowPlacement(_Strict):
    pool: str = Field(min_length=1)
    queue: str = Field(min_length=1)


class ContainerLimits(_Strict):
    cpus: float = Field(gt=0)
    memory: Bytes
    gpus: int = Field(ge=0)


class Profile(_Strict):
    """The resources of one model (see the module docstring and ``docs/models.md``)."""

    name: str
    device_class: Literal["cpu", "gpu"]
    min_gpu_memory: Bytes
    precision: PrecisionRules = PrecisionRules()
    token_budget: TokenBudget
    host_memory: Bytes
    dask_resources: dict[str, float] = Field(default_factory=dict)
    airflow: AirflowPlacement
    container: ContainerLimits

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        from pipelines.models.registry import get_spec

        spec = get_spec(self.name)
        for kind in DEVICE_KINDS:
            budget = getattr(self.token_budget, kind)
            if budget < spec.input_size:
                raise ValueError(
                    f"token_budget.{kind}={budget} is below the input size {spec.input_size} (one cell) of {self.name}"
                )
        if self.device_class == "gpu" and self.container.gpus < 1:
            raise ValueError("a gpu profile needs container.gpus >= 1")
        return self

    @property
    def input_size(self) -> int:
        """The model's context length (tokens per cell at most)."""
        from pipelines.models.registry import get_spec

        return get_spec(self.name).input_size

    @property
    def airflow_pool(self) -> str:
        return self.airflow.pool

    @property
    def airflow_queue(self) -> str:
        return self.airflow.queue

    def precision_for(self, device: str, *, bf16_supported: bool) -> Precision:
        """Default precision on ``device``: bf16 on GPUs that support it, fp16 on older GPUs, the cpu rule on CPU.

        The cpu rule (``precision.cpu``, bf16 in the packaged profiles) falls back to fp32 on a
        CPU without bf16 hardware.

        Parameters
        ----------
        device : str
            ``cpu``, ``cuda``, ``cuda:<i>`` (or ``gpu``).
        bf16_supported : bool
            Whether the device computes in bfloat16 (:func:`bf16_support`).
        """
        if device_kind(device) == "gpu":
            return self.precision.cuda_bf16 if bf16_supported else self.precision.cuda
        if self.precision.cpu == "bf16" and not bf16_supported:
            return "fp32"
        return self.precision.cpu

    def allowed_precisions(self, device: str, *, bf16_supported: bool = True) -> tuple[Precision, ...]:
        """Precisions ``--precision`` may pick on ``device``."""
        if device_kind(device) == "gpu":
            return ("bf16", "fp16", "fp32") if bf16_supported else ("fp16", "fp32")
        return tuple(p for p in self.precision.cpu_allowed if p != "bf16" or bf16_supported)

    def resolve_precision(
        self, device: str, requested: str | None, *, bf16_supported: bool, why_not_bf16: str = ""
    ) -> Precision:
        """``requested`` if the device allows it, else :class:`ConfigError`; ``None`` gives the default.

        ``why_not_bf16`` (the reason of :func:`bf16_support`) goes into the message that refuses
        bf16 on a device without it.
        """
        if requested is None:
            return self.precision_for(device, bf16_supported=bf16_supported)
        allowed = self.allowed_precisions(device, bf16_supported=bf16_supported)
        if requested not in allowed:
            why = f": {why_not_bf16}" if requested == "bf16" and why_not_bf16 else ""
            raise ConfigError(
                f"precision {requested!r} is not available for {self.name} on {device!r}{why}; allowed: {list(allowed)}"
            )
        return requested  # type: ignore[return-value]

    def compute_for(
        self, device: str | None = None, precision: str | None = None, token_budget: int | None = None
    ) -> Compute:
        """Resolve a run's device (:func:`resolve_device`), precision and token budget on this machine.

        ``precision`` and ``token_budget`` default to the profile's for the device; the
        default precision is bf16 only where :func:`bf16_support` says the device has it
        (on CPU: from the flags in ``/proc/cpuinfo``), and asking for bf16 elsewhere is refused
        with the reason.
        """
        dev = resolve_device(device)
        bf16 = bf16_support(dev)
        prec = self.resolve_precision(dev, precision, bf16_supported=bf16.supported, why_not_bf16=bf16.reason)
        return Compute(dev, prec, int(token_budget or self.token_budget_for(dev)))

    def token_budget_for(self, device: str) -> int:
        """Tokens per forward batch on ``device`` (cpu or gpu budget)."""
        return getattr(self.token_budget, device_kind(device))

    def cells_per_batch(self, device: str) -> int:
        """Cells per forward batch at full context length (at least one)."""
        return max(1, self.token_budget_for(device) // self.input_size)

    def dask_resources_for(self, device: str) -> dict[str, float]:
        """Dask resource tags for a task running on ``device``: none on CPU, the profile's tags on GPU."""
        return dict(self.dask_resources) if device_kind(device) == "gpu" else {}


def profiles_path() -> Path:
    """The profiles in force: ``SCLAKE_PROFILES`` (a site's own YAML file) or the packaged file."""
    env = os.environ.get(PROFILES_ENV)
    return Path(env) if env else PROFILES_FILE


def _profiles_text(path: Path | None) -> tuple[str, str]:
    path = Path(path) if path is not None else profiles_path()
    try:
        return path.read_text(), str(path)
    except OSError as e:
        raise ConfigError(f"resource profiles {str(path)!r} cannot be read: {e}") from e


def parse_profiles(text: str, source: str = "<profiles>") -> dict[str, Profile]:
    """Profiles from YAML text; every model of the registry must have one, and no unknown names."""
    from pipelines.models.registry import MODELS

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: not a mapping of settings")
    formats.check("resource-profiles", data, str(source), error=ConfigError)
    raw: dict[str, Any] = data.get("profiles") or {}
    unknown = sorted(set(raw) - set(MODELS))
    if unknown:
        raise ConfigError(f"{source}: profiles for unknown models {unknown}; known models: {', '.join(MODELS)}")
    missing = [m for m in MODELS if m not in raw]
    if missing:
        raise ConfigError(f"{source}: no profile for {missing}")
    out = {}
    for name, body in raw.items():
        try:
            out[name] = Profile(name=name, **(body or {}))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'profile'}: {err['msg']}"
                + (f" (got {err['input']!r})" if err["type"] != "value_error" else "")
                for err in e.errors()
            )
            raise ConfigError(f"{source}: profile {name!r} is invalid: {problems}") from e
    return out


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Every profile by model name: from ``path``, else ``SCLAKE_PROFILES``, else the packaged file."""
    return _load_profiles(Path(path) if path is not None else profiles_path())


@lru_cache(maxsize=4)
def _load_profiles(path: Path) -> dict[str, Profile]:
    text, source = _profiles_text(path)
    return parse_profiles(text, source)


def get_profile(name: str, path: Path | None = None) -> Profile:
    """The profile of model ``name``; :class:`ConfigError` lists the known names otherwise."""
    profiles = load_profiles(path)
    try:
        return profiles[name]
    except KeyError:
        raise ConfigError(
            f"no resource profile for model {name!r}; profiles exist for: {', '.join(profiles)}"
        ) from None
