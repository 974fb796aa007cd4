# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""What the machine can run fast: one probe of the CPU's instruction sets and the CUDA devices.

The fastest correct path depends on the hardware far more than on the code: bfloat16 autocast is several times faster
than float32 on CPUs with native bf16 dot products (AMX, AVX512-BF16) and several times *slower* on AVX2-only CPUs,
which emulate it. :func:`probe` reads what the bundles' ``auto`` precision, the benchmarks' reports and bug reports
need, once; ``python -m transfuse_monai.utils.hardware`` prints it.

The probe honours the kernel limits PyTorch and oneDNN are given (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
the ways to emulate an older CPU on a newer one): a capability the libraries are told not to use is reported as absent.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import asdict, dataclass, field

__all__ = ["HardwareInfo", "CudaDevice", "probe", "describe"]

#: /proc/cpuinfo flags -> the names used here.
_CPU_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_tile": "amx_tile",
}
#: oneDNN ISA limits (``ONEDNN_MAX_CPU_ISA``) below which a feature is not used, by feature.
_ONEDNN_BELOW = {
    "amx": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
            "AVX10_1_512"),
    "avx512_bf16": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"),
    "avx512_vnni": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"),
    "avx512": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"),
}


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device: name, compute capability, memory and whether it computes in bfloat16 natively."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float
    bf16: bool


@dataclass(frozen=True)
class HardwareInfo:
    """What :func:`probe` found.

    Attributes:
        cpu: the CPU's model name.
        cores: logical CPUs this process may use.
        isa: the CPU features present and usable (see :data:`_CPU_FLAGS`), after the kernel limits.
        torch_capability: PyTorch's CPU kernel level (``torch.backends.cpu.get_cpu_capability()``).
        onednn_max_isa: the ``ONEDNN_MAX_CPU_ISA`` limit, when one is set.
        cpu_bf16: native bfloat16 dot products usable (AMX or AVX512-BF16): bf16 autocast pays off.
        cpu_amx: AMX tiles usable (the fastest bf16 and int8 matrix products).
        cpu_int8: native int8 dot products usable (VNNI or AMX): int8 inference pays off.
        cuda: the CUDA devices.
        versions: Python, PyTorch and the probe's platform.
    """

    cpu: str
    cores: int
    isa: tuple[str, ...]
    torch_capability: str
    onednn_max_isa: str
    cpu_bf16: bool
    cpu_amx: bool
    cpu_int8: bool
    cuda: tuple[CudaDevice, ...] = field(default_factory=tuple)
    versions: dict = field(default_factory=dict)

    @property
    def cpu_kind(self) -> str:
        """A short name of the CPU's class: ``"AMX"``, ``"AVX512-BF16"``, ``"AVX-512"``, ``"AVX2"`` or ``"older"``."""
        if self.cpu_amx:
            return "AMX"
        if self.cpu_bf16:
            return "AVX512-BF16"
        if "avx512" in self.isa:
            return "AVX-512"
        return "AVX2" if "avx2" in self.isa else "older"

    def as_dict(self) -> dict:
        """A JSON-friendly copy (for reports)."""
        out = asdict(self)
        out["cpu_kind"] = self.cpu_kind
        return out


def _cpu_flags() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if name and flags and key == "":
                    break
    except OSError:  # not Linux: the flags stay unknown and no native path is assumed
        pass
    return name, flags


def _limited(feature: str, torch_capability: str, onednn_max: str) -> bool:
    """Whether the kernel limits forbid ``feature`` (``"amx"``, ``"avx512_bf16"``, ``"avx512_vnni"``, ``"avx512"``)."""
    if onednn_max and onednn_max.upper() in _ONEDNN_BELOW.get(feature, ()):
        return True
    return torch_capability.upper() in ("DEFAULT", "AVX2", "NO AVX") and feature != "avx2"


@functools.lru_cache(maxsize=1)
def probe() -> HardwareInfo:
    """Probe the machine once (cached): the CPU's usable instruction sets and the CUDA devices."""
    import torch

    name, flags = _cpu_flags()
    torch_capability = str(torch.backends.cpu.get_cpu_capability())
    onednn_max = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    present = {ours for flag, ours in _CPU_FLAGS.items() if flag in flags}
    usable = set()
    for feature in present:
        group = "amx" if feature.startswith("amx") else feature
        if feature in ("avx2", "avx_vnni") or not _limited(group, torch_capability, onednn_max):
            usable.add(feature)
    amx = {"amx_tile", "amx_bf16"} <= usable
    bf16 = amx or "avx512_bf16" in usable
    int8 = amx or "amx_int8" in usable or "avx512_vnni" in usable or "avx_vnni" in usable
    cuda = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda.append(CudaDevice(
                index, props.name, (props.major, props.minor), round(props.total_memory / 2**30, 1),
                props.major >= 8,
            ))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return HardwareInfo(
        cpu=name, cores=cores, isa=tuple(sorted(usable)), torch_capability=torch_capability,
        onednn_max_isa=onednn_max, cpu_bf16=bf16, cpu_amx=amx, cpu_int8=int8, cuda=tuple(cuda),
        versions={"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
    )


def describe(info: HardwareInfo | None = None) -> str:
    """The probe as a few readable lines (bug reports, benchmark headers, logs)."""
    info = info or probe()
    limits = f", ONEDNN_MAX_CPU_ISA={info.onednn_max_isa}" if info.onednn_max_isa else ""
    lines = [
        f"CPU: {info.cpu} ({info.cores} usable cores), class {info.cpu_kind}",
        f"  instruction sets in use: {', '.join(info.isa) or 'none detected'} "
        f"(PyTorch kernels: {info.torch_capability}{limits})",
        f"  native bf16: {'yes' if info.cpu_bf16 else 'no'}, AMX: {'yes' if info.cpu_amx else 'no'}, "
        f"native int8 dot products: {'yes' if info.cpu_int8 else 'no'}",
    ]
    if not info.cuda:
        lines.append("CUDA: no device")
    for dev in info.cuda:
        lines.append(f"CUDA {dev.index}: {dev.name}, compute capability {dev.capability[0]}.{dev.capability[1]}, "
                     f"{dev.memory_gib:g} GiB, native bf16: {'yes' if dev.bf16 else 'no'}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in info.versions.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m transfuse_monai.utils.hardware [--json]``: print the probe."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m transfuse_monai.utils.hardware", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="print the probe as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(probe().as_dict(), indent=2) if args.json else describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
