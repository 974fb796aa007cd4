# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Plumbing shared by the real-data bundle benchmarks (``budget_run.py``, ``bundle_fast_paths.py``): running
``monai.bundle`` commands from the repository root with logs, and formatting their figures. Nothing here knows a
bundle's config ids (``budget_run.py`` keeps those in one table)."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fmt_seconds(seconds: float | None) -> str:
    """``m:ss``, or ``n/a``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def fmt_value(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def rel(path: Path) -> str:
    """``path`` relative to the repository root (where the commands run), for readable command lines."""
    return os.path.relpath(path, REPO)


def shown(cmd: list[str]) -> str:
    """The command line as a user would type it from the repository root."""
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def config_list(files: list[Path]) -> str:
    """A ``--config_file`` list argument of repository-relative paths."""
    return "[" + ",".join(json.dumps(rel(f)) for f in files) + "]"


def run_logged(cmd: list[str], log_path: Path, env: dict) -> float:
    """Run ``cmd`` from the repository root with its output in ``log_path``; return the wall time; exit on failure."""
    print(f"$ {shown(cmd)}\n  (log: {rel(log_path)})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shown(cmd)}\n\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"command failed with exit code {proc.returncode} after {wall:.0f} s; see {log_path}")
    print(f"  done in {fmt_seconds(wall)} (m:ss)", flush=True)
    return wall
