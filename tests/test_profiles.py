"""Resource profiles: every model covered, precision and batch rules, errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.errors import ConfigError
from pipelines.models import MODELS, get_spec
from pipelines.profiles import (
    PROFILES_FILE,
    Compute,
    bf16_support,
    bf16_supported,
    cpu_bf16_support,
    cpu_flags,
    device_kind,
    get_profile,
    load_profiles,
    parse_bytes,
    parse_profiles,
    resolve_device,
)

GIB = 2**30


def test_every_model_has_a_profile() -> None:
    profiles = load_profiles()
    assert set(profiles) == set(MODELS)
    for name, p in profiles.items():
        assert p.name == name
        assert p.token_budget_for("cpu") >= get_spec(name).input_size
        assert p.token_budget_for("cuda") > p.token_budget_for("cpu")
        assert p.host_memory <= p.container.memory
        if p.device_class == "gpu":
            assert p.dask_resources == {"GPU": 1} and p.container.gpus == 1 and p.airflow_queue == "gpu"
        else:
            assert p.dask_resources == {} and p.container.gpus == 0


def test_budgets_and_memory_scale_with_model_size() -> None:
    by_size = sorted(load_profiles().values(), key=lambda p: (p.input_size, get_spec(p.name).parameter_count()))
    for small, big in zip(by_size, by_size[1:], strict=False):
        assert big.token_budget_for("gpu") <= small.token_budget_for("gpu")
        assert big.min_gpu_memory >= small.min_gpu_memory
        assert big.host_memory >= small.host_memory
    small = get_profile("gf-6L-10M-i2048")
    assert small.device_class == "cpu" and small.host_memory == int(1.5 * GIB)
    assert get_profile("gf-18L-316M-i4096").device_class == "gpu"


def test_precision_rules() -> None:
    p = get_profile("gf-12L-38M-i4096")
    assert p.precision_for("cuda", bf16_supported=True) == "bf16"
    assert p.precision_for("cuda:1", bf16_supported=False) == "fp16"
    assert p.precision_for("cpu", bf16_supported=True) == "bf16"
    assert p.precision_for("cpu", bf16_supported=False) == "fp32"
    assert p.allowed_precisions("cpu") == ("fp32", "bf16")
    assert p.allowed_precisions("cpu", bf16_supported=False) == ("fp32",)
    assert p.resolve_precision("cpu", "bf16", bf16_supported=True) == "bf16"
    assert p.resolve_precision("cuda", None, bf16_supported=False) == "fp16"
    with pytest.raises(
        ConfigError, match=r"precision 'fp16' is not available .* on 'cpu'; allowed: \['fp32', 'bf16'\]"
    ):
        p.resolve_precision("cpu", "fp16", bf16_supported=True)
    with pytest.raises(ConfigError, match=r"precision 'bf16' .* allowed: \['fp16', 'fp32'\]"):
        p.resolve_precision("cuda:0", "bf16", bf16_supported=False)


ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\nflags\t: avx2 avx512_bf16 amx_bf16\n"


def test_cpu_flags_decide_bf16() -> None:
    assert cpu_flags(ZEN3) == {"fpu", "sse", "sse2", "avx", "avx2", "fma", "f16c"}
    assert cpu_bf16_support(cpu_flags(ZEN4)) == cpu_bf16_support({"avx512_bf16"})
    assert cpu_bf16_support(cpu_flags(ZEN4)).reason == "CPU flags avx512_bf16"
    assert cpu_bf16_support(cpu_flags(SAPPHIRE_RAPIDS)).reason == "CPU flags avx512_bf16, amx_bf16"
    assert cpu_bf16_support(cpu_flags(SAPPHIRE_RAPIDS)).supported
    # AVX-512 alone (Skylake-X, Ice Lake) has no bf16 instructions
    assert not cpu_bf16_support({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}).supported
    assert bf16_supported("cpu", flags={"amx_bf16"}) and not bf16_supported("cpu", flags=cpu_flags(ZEN3))


@pytest.mark.parametrize(
    ("cpuinfo", "default", "allowed"), [(ZEN3, "fp32", ["fp32"]), (ZEN4, "bf16", ["fp32", "bf16"])]
)
def test_default_cpu_precision_from_the_cpu_flags(tmp_path, monkeypatch, cpuinfo, default, allowed) -> None:
    """What the CPU reports decides the profile's precision on CPU: bf16 where it has bf16 hardware, else fp32."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    monkeypatch.setattr("pipelines.profiles.CPUINFO", fake)
    for name in ("gf-6L-10M-i2048", "gf-12L-38M-i4096"):
        p = get_profile(name)
        assert p.compute_for("cpu").precision == default
        assert list(p.allowed_precisions("cpu", bf16_supported=bf16_supported("cpu"))) == allowed
        assert p.compute_for("cpu", "fp32").precision == "fp32"


def test_bf16_on_a_cpu_without_it_is_refused_with_the_missing_flags(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN3)
    monkeypatch.setattr("pipelines.profiles.CPUINFO", fake)
    with pytest.raises(ConfigError) as e:
        get_profile("gf-6L-10M-i2048").compute_for("cpu", "bf16")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (
        "precision 'bf16' is not available for gf-6L-10M-i2048 on 'cpu': this CPU has no bf16 hardware "
        "(/proc/cpuinfo lists neither avx512_bf16 nor amx_bf16; torch would emulate bf16, many times slower "
        "than fp32); allowed: ['fp32']"
    )
    fake.write_text(ZEN4)
    assert get_profile("gf-6L-10M-i2048").compute_for("cpu", "bf16").precision == "bf16"


def test_unreadable_cpuinfo_leaves_the_decision_to_torch(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr("pipelines.profiles.CPUINFO", tmp_path / "absent")
    assert cpu_flags() is None
    support = bf16_support("cpu")
    assert support.supported == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert support.reason.startswith("no /proc/cpuinfo; torch's oneDNN")


def test_token_budget_and_batches() -> None:
    p = get_profile("gf-6L-10M-i2048")
    assert p.token_budget_for("cpu") == 16384 and p.cells_per_batch("cpu") == 8
    assert p.token_budget_for("cuda:0") == p.token_budget_for("gpu")
    assert get_profile("gf-18L-316M-i4096").cells_per_batch("cpu") == 1
    assert get_profile("gf-18L-316M-i4096").dask_resources_for("cpu") == {}
    assert get_profile("gf-18L-316M-i4096").dask_resources_for("cuda") == {"GPU": 1}


def test_compute_for_a_run_on_this_machine() -> None:
    p = get_profile("gf-6L-10M-i2048")
    assert p.compute_for("cpu", "fp32") == Compute("cpu", "fp32", p.token_budget_for("cpu"))
    assert p.compute_for("CPU", token_budget=4096).token_budget == 4096
    assert p.compute_for("cpu").precision == p.precision_for("cpu", bf16_supported=bf16_supported("cpu"))
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"precision 'fp16' is not available"):
        p.compute_for("cpu", "fp16")
    with pytest.raises(ConfigError, match=r"device 'tpu' is not supported"):
        p.compute_for("tpu")


def test_unknown_model_and_device() -> None:
    with pytest.raises(ConfigError, match=r"no resource profile for model 'gf-99L'.*gf-6L-10M-i2048"):
        get_profile("gf-99L")
    with pytest.raises(ConfigError, match=r"device 'mps' is not supported"):
        device_kind("mps")


def test_sizes() -> None:
    assert parse_bytes("1.5 GiB") == int(1.5 * GIB)
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match=r"size '3 parsecs'"):
        parse_bytes("3 parsecs")


def _edited(edit) -> str:
    data = yaml.safe_load(PROFILES_FILE.read_text())
    edit(data)
    return yaml.safe_dump(data)


def test_profiles_file_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no profile for \['gf-6L-10M-i2048'\]"):
        parse_profiles(_edited(lambda d: d["profiles"].pop("gf-6L-10M-i2048")))
    with pytest.raises(ConfigError, match=r"unknown models \['gf-1L'\]"):
        parse_profiles(_edited(lambda d: d["profiles"].update({"gf-1L": d["profiles"]["gf-6L-10M-i2048"]})))

    def small_budget(d: dict) -> None:
        d["profiles"]["gf-18L-316M-i4096"]["token_budget"]["cpu"] = 2048

    with pytest.raises(ConfigError, match=r"token_budget.cpu=2048 is below the input size 4096"):
        parse_profiles(_edited(small_budget))

    def bad_precision(d: dict) -> None:
        profile = d["profiles"]["gf-6L-10M-i2048"]
        profile["precision"] = {**profile["precision"], "cuda": "int8"}

    with pytest.raises(ConfigError, match=r"profile 'gf-6L-10M-i2048' is invalid: precision.cuda: .* \(got 'int8'\)$"):
        parse_profiles(_edited(bad_precision))
    with pytest.raises(ConfigError, match=r"sclake.resource-profiles version '2'; this sclake reads version\(s\) 1"):
        parse_profiles(_edited(lambda d: d.update({"encoding-version": "2"})))
    # a profiles file elsewhere is read the same way
    other = tmp_path / "profiles.yaml"
    other.write_text(_edited(lambda d: d["profiles"]["gf-6L-10M-i2048"].update({"host_memory": "1 GiB"})))
    assert get_profile("gf-6L-10M-i2048", other).host_memory == GIB
