"""Precision and thread choice from what the CPU reports: every capability string is tested here
without the hardware (the flags are given), so the tests pass on any CPU."""
from __future__ import annotations

import pytest

from rerank.hardware import (
    CpuFeatures,
    capped_flags,
    cgroup_cpu_limit,
    default_threads,
    isa_cap,
    parse_cpuinfo,
    physical_cores_of,
)
from rerank.precision import choose_precision, resolve_precision

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_int8 amx_tile"
ICE_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
COOPER_LAKE_NO_AMX = "fpu avx2 avx512f avx512_vnni avx512_bf16"
ALDER_LAKE = "fpu avx2 avx_vnni"
EPYC_ZEN2 = "fpu sse2 avx avx2 fma"
EPYC_ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16"


@pytest.mark.parametrize("flags, expected", [
    (SAPPHIRE_RAPIDS, "bf16"), (COOPER_LAKE_NO_AMX, "bf16"), (ICE_LAKE, "int8"), (ALDER_LAKE, "int8"),
    (EPYC_ZEN2, "fp32"), (EPYC_ZEN4, "bf16"), ("", "fp32"),
])
def test_auto_precision_follows_the_cpu_flags(flags, expected):
    features = CpuFeatures(frozenset(flags.split()), "AVX512" if "avx512f" in flags else "AVX2")
    precision, reason = choose_precision(features)
    assert precision == expected and reason.startswith(expected)
    assert resolve_precision("auto", features)[0] == expected
    assert resolve_precision("fp32", features) == ("fp32", "fp32: chosen by the user")  # an explicit choice wins
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        resolve_precision("fp16", features)


def test_cpuinfo_flags_and_describe():
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: " + SAPPHIRE_RAPIDS + "\n\nprocessor\t: 1\nflags\t: x\n"
    flags, model = parse_cpuinfo(text)
    assert "amx_bf16" in flags and "x" not in flags and model == "Intel(R) Xeon(R)"
    assert CpuFeatures(flags, "AVX512").describe() == "AVX512 + amx_bf16, avx512_bf16, avx512_vnni, avx_vnni, amx_int8"
    # torch's capability is not repeated as a flag; a flag above it (a capped oneDNN) still shows
    assert CpuFeatures(frozenset({"avx2"}), "AVX2").describe() == "AVX2"
    assert CpuFeatures(frozenset({"avx2", "avx512f"}), "AVX2").describe() == "AVX2 + avx512f"


def test_physical_cores_count_cores_not_hyperthreads_within_the_affinity_mask():
    blocks = [f"processor\t: {p}\nphysical id\t: {s}\ncore id\t\t: {c}\n" for p, (s, c) in
              enumerate([(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1), (1, 0), (1, 1)])]
    text = "\n".join(blocks)
    assert physical_cores_of(text) == 4  # 8 logical CPUs, 2 sockets x 2 cores, hyper-threaded
    assert physical_cores_of(text, allowed={0, 2}) == 1  # two hyper-threads of one core
    assert physical_cores_of(text, allowed={0, 1, 4}) == 3
    assert physical_cores_of("nothing useful") == 0


def test_cgroup_quotas_v2_and_v1(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(v1) is None


def test_default_threads_respect_a_cgroup_quota(tmp_path):
    import os

    cpus = sorted(os.sched_getaffinity(0))
    text = "\n".join(f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p}\n" for p in cpus)
    (tmp_path / "cpuinfo").write_text(text)
    threads, reason = default_threads(tmp_path / "cpuinfo", tmp_path / "no-cgroup")
    assert threads == len(cpus) and f"{len(cpus)} physical cores" in reason
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.max").write_text("50000 100000\n")
    threads, reason = default_threads(tmp_path / "cpuinfo", tmp_path / "cg")
    assert threads == 1 and "cgroup quota 0.5 CPUs" in reason


@pytest.mark.parametrize("cap, expected", [
    ("AVX2", "fp32"), ("avx2_vnni", "int8"), ("AVX512_CORE_VNNI", "int8"), ("AVX512_CORE_BF16", "bf16"),
    ("AVX512_CORE_AMX", "bf16"), ("ALL", "bf16"), ("", "bf16"), ("nonsense", "bf16"),
])
def test_a_onednn_isa_cap_chooses_as_the_capped_cpu_would(cap, expected):
    # ONEDNN_MAX_CPU_ISA=AVX2 on a Sapphire Rapids machine: bf16 is emulated there, as on an AVX2 EPYC.
    flags = capped_flags(frozenset(SAPPHIRE_RAPIDS.split()), isa_cap({"ONEDNN_MAX_CPU_ISA": cap}))
    assert choose_precision(CpuFeatures(flags, "AVX2"))[0] == expected
    if cap == "AVX2":
        assert not any(f.startswith(("avx512", "amx")) for f in flags) and "avx2" in flags
    assert isa_cap({"DNNL_MAX_CPU_ISA": "AVX2"}) == "AVX2" and isa_cap({}) is None
