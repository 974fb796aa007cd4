"""Run the numeric tests under every CPU kernel back-end of ``tests/kernel_configs.py`` and print the matrix.

A test that pins a float to one CPU's rounding passes on the machine it was written on and fails on another kind
(AVX2 vs AVX-512 vs AMX hosts); forcing PyTorch's and oneDNN's kernels down to other ISA levels shows it on one
machine. Usage, from the repository root with the dev requirements installed::

    python .ci/isa_matrix.py                               # the numeric test modules, every configuration
    python .ci/isa_matrix.py --configs native "aten=avx2" -- tests/test_losses.py -k structure

Prints one Markdown row per configuration (the ISA PyTorch reports under it, passed / failed / skipped, minutes)
and exits non-zero when any configuration has a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from kernel_configs import KERNEL_CONFIGS  # noqa: E402

#: Test modules whose assertions compare floating-point results of kernels (networks, losses, metrics, training).
NUMERIC_TESTS = (
    "tests/test_bundle_regression.py",
    "tests/test_transfuse.py",
    "tests/test_authors_checkpoint.py",
    "tests/test_losses.py",
    "tests/test_inferers.py",
    "tests/test_input_channels.py",
    "tests/test_portable_checkpoints.py",
    "tests/test_volumes.py",
    "tests/test_engines.py",
    "tests/test_handlers.py",
    "tests/test_segmentation_metrics.py",
    "tests/test_polyp_metrics.py",
    "tests/test_binary_metrics.py",
    "tests/test_multiclass_training.py",
)

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def capability(env: dict[str, str]) -> str:
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(KERNEL_CONFIGS), choices=list(KERNEL_CONFIGS))
    parser.add_argument("pytest_args", nargs="*", help="after --: test paths and pytest options (default: the numeric "
                        "test modules)")
    args = parser.parse_args(argv)
    tests = args.pytest_args or list(NUMERIC_TESTS)
    rows = ["| configuration | variables | PyTorch ISA | passed | failed | skipped | minutes |",
            "|---|---|---|---:|---:|---:|---:|"]
    failed_any = False
    for label in args.configs:
        env = KERNEL_CONFIGS[label]
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True)
        minutes = (time.monotonic() - start) / 60
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
        counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in _COUNT.findall(tail)}
        failed = counts.get("failed", 0) + counts.get("error", 0)
        failed_any |= failed > 0 or proc.returncode != 0
        variables = " ".join(f"{k}={v}" for k, v in env.items()) or "(none)"
        rows.append(f"| {label} | {variables} | {capability(env)} | {counts.get('passed', 0)} | {failed} | "
                    f"{counts.get('skipped', 0)} | {minutes:.1f} |")
        print(f"{label}: {tail}", flush=True)
        if proc.returncode != 0:
            failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            print("\n".join(failures[:20]), flush=True)
    print("\n".join(rows))
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
