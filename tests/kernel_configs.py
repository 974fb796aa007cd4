"""CPU kernel back-ends a test run can be forced onto, to prove numeric tests portable across CPUs on one machine.

PyTorch picks its own kernels by ``ATEN_CPU_CAPABILITY`` (``default`` = no vector ISA, ``avx2``, ``avx512``) and
oneDNN (convolutions, matrix products) by ``ONEDNN_MAX_CPU_ISA`` (``DEFAULT`` = SSE4.1, ``AVX2``, ``AVX512_CORE``,
...), each capped at what the host has: on an AVX2-only host the AVX-512 settings run AVX2 kernels. Used by
``tests/test_bundle_regression.py --record`` (its tolerances) and ``.ci/isa_matrix.py`` (the numeric tests under each).
"""

from __future__ import annotations

#: label -> environment variables of one configuration ("native": what the host picks by itself).
KERNEL_CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten=default, onednn=AVX2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten=avx2, onednn=AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "aten=avx512, onednn=AVX512_CORE": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "onednn=DEFAULT (SSE4.1)": {"ONEDNN_MAX_CPU_ISA": "DEFAULT"},
}
