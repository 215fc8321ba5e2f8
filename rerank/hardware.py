"""What the CPU offers (its instruction-set flags, as the precisions' hardware tests read them)
and the thread count that suits it.

torch's own report (``torch.backends.cpu.get_cpu_capability()``) names only the widest vector
ISA (``AVX512`` on a Sapphire Rapids Xeon with AMX), so the instruction-set flags are read from
``/proc/cpuinfo`` as well. Which precision each set of flags runs fast is said by the precisions
themselves (:data:`rerank.precision.PRECISIONS`): bf16 where AMX (``amx_bf16``) or AVX-512-BF16
(``avx512_bf16``) is present, int8 where VNNI is present but no bf16, fp32 otherwise (on
AVX2-only CPUs bf16 is emulated and several times *slower* than fp32).

oneDNN's own cap on the instruction set (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX2``) is honoured: the
flags it rules out are dropped, so a run capped to AVX2 on a Sapphire Rapids machine chooses
as an AVX2-only AMD EPYC would (and is as slow in bf16).

Threads: the physical cores this process may use, counting the CPU affinity mask and a cgroup
CPU quota (containers), and one thread per core rather than per hyper-thread.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's instruction-set flags (as ``/proc/cpuinfo`` names them) and torch's capability."""

    flags: frozenset[str] = field(default_factory=frozenset)
    torch_capability: str = ""
    model: str = ""

    @property
    def bf16(self) -> bool:
        """Native bf16 matrix arithmetic (AMX or AVX-512-BF16)."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def vnni(self) -> bool:
        """Native int8 dot products (VNNI or AMX-INT8)."""
        return any(flag in self.flags for flag in VNNI_FLAGS)

    def describe(self) -> str:
        """A short line for traces and tables, e.g. ``AVX512 + amx_bf16, avx512_bf16, avx512_vnni``:
        torch's capability, then the flags it does not already name (``avx512f`` under an AVX2 cap)."""
        implied = {"AVX512": ("avx512f", "avx2"), "AVX2": ("avx2",)}.get(self.torch_capability, ())
        shown = [flag for flag in (*BF16_FLAGS, *VNNI_FLAGS, "avx512f", "avx2")
                 if flag in self.flags and flag not in implied]
        return f"{self.torch_capability or 'unknown'}" + (f" + {', '.join(shown)}" if shown else "")


def parse_cpuinfo(text: str) -> tuple[frozenset[str], str]:
    """The flags and model name of the first processor in ``/proc/cpuinfo`` text."""
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which its bf16 / int8 kernels are not native.
_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
              "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")


def isa_cap(environ: Mapping[str, str] | None = None) -> str | None:
    """oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA``, or ``DNNL_MAX_CPU_ISA``) when set
    to one it knows, else None (no cap; ``ALL`` and ``DEFAULT`` mean none)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    value = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return value if value in _ISA_ORDER else None


def capped_flags(flags: frozenset[str], cap: str | None) -> frozenset[str]:
    """``flags`` less those a oneDNN ISA ``cap`` rules out (bf16 below ``AVX512_CORE_BF16``, AMX
    below ``AVX512_CORE_AMX``, VNNI below ``AVX2_VNNI``, AVX-512 below ``AVX512_CORE``)."""
    if cap is None:
        return flags
    level = _ISA_ORDER.index(cap)
    dropped = set()
    if level < _ISA_ORDER.index("AVX512_CORE_BF16"):
        dropped |= {"avx512_bf16", "amx_bf16"}
    if level < _ISA_ORDER.index("AVX10_1_512_AMX"):
        dropped |= {"amx_bf16", "amx_int8", "amx_tile", "amx_fp16"}
    if level < _ISA_ORDER.index("AVX512_CORE_VNNI"):
        dropped.add("avx512_vnni")
    if level < _ISA_ORDER.index("AVX2_VNNI"):
        dropped.add("avx_vnni")
    if level < _ISA_ORDER.index("AVX512_CORE"):
        dropped |= {f for f in flags if f.startswith("avx512")}
    return frozenset(f for f in flags if f not in dropped)


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (empty flags where ``/proc/cpuinfo`` does not exist),
    less what ``ONEDNN_MAX_CPU_ISA`` rules out."""
    try:
        flags, model = parse_cpuinfo(Path(cpuinfo).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags, model = frozenset(), ""
    flags = capped_flags(flags, isa_cap())
    try:
        import torch  # deferred: torch takes long to import

        capability = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        capability = ""
    return CpuFeatures(flags, capability, model)


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` of cgroup v2, or
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of v1), or ``None`` when there is none."""
    root = Path(root)
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100_000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def physical_cores_of(cpuinfo: str, allowed: set[int] | None = None) -> int:
    """Distinct (physical id, core id) pairs among the processors in ``allowed`` (all if
    ``None``), from ``/proc/cpuinfo`` text; 0 if the text does not say."""
    cores: set[tuple[str, str]] = set()
    processor, physical, core = None, "0", None
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processor = int(value)
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not line.strip():
            if processor is not None and core is not None and (allowed is None or processor in allowed):
                cores.add((physical, core))
            processor, physical, core = None, "0", None
    return len(cores)


def default_threads(cpuinfo: str | Path = "/proc/cpuinfo", cgroup_root: str | Path = "/sys/fs/cgroup") -> tuple[int, str]:
    """How many intra-op threads to use: the physical cores this process may run on, capped by
    its cgroup quota (rounded up); with the reason, for the trace."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        cores = physical_cores_of(Path(cpuinfo).read_text(encoding="utf-8", errors="replace"), allowed)
    except OSError:
        cores = 0
    reason = f"{cores} physical cores among {len(allowed)} allowed CPUs" if cores else f"{len(allowed)} allowed CPUs"
    threads = cores or len(allowed)
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None and math.ceil(limit) < threads:
        threads = max(1, math.ceil(limit))
        reason += f", cgroup quota {limit:g} CPUs"
    return threads, reason


_threads_applied: tuple[int, str] | None = None


def apply_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads and say how many and why: ``threads`` if given; else leave
    ``OMP_NUM_THREADS``, or a ``torch.set_num_threads`` call made after rerank set its default,
    alone; else (once per process) :func:`default_threads`, the physical cores this process may
    use."""
    global _threads_applied
    import torch  # deferred: torch takes long to import

    if threads:
        torch.set_num_threads(threads)
        _threads_applied = (threads, f"{threads} threads: set by the user")
        return _threads_applied
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), f"{torch.get_num_threads()} threads: OMP_NUM_THREADS"
    if _threads_applied is None:
        count, reason = default_threads()
        torch.set_num_threads(count)
        _threads_applied = (count, f"{count} threads: {reason}")
    elif torch.get_num_threads() != _threads_applied[0]:  # someone called torch.set_num_threads since
        return torch.get_num_threads(), f"{torch.get_num_threads()} threads: set by torch.set_num_threads"
    return _threads_applied
