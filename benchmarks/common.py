# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmark commands, each written once: where things are, what the host is, timing loops and
their statistics, Markdown formatting, result files, and ``monai.bundle`` (or any) subprocesses run with a log.

Only the standard library is imported at module level (torch where a function needs it), so that ``python -m
benchmarks --help`` and the bundle processes that import a command module stay light.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the repository root: every ``monai.bundle`` command runs from here
REPO = Path(__file__).resolve().parents[1]
#: the default parent of every command's ``--out`` (git-ignored)
OUTPUT = REPO / "benchmarks" / "output"


class UsageError(Exception):
    """A bad option or combination of options found after parsing: ``python -m benchmarks`` reports it as a usage
    error of the command (its usage line, the message, exit code 2)."""


def shared_data(name: str) -> Path:
    """The default data root of a task: ``../shared/data/<name>`` beside the repository."""
    return REPO.parent / "shared" / "data" / name


@contextlib.contextmanager
def sys_path_entry(folder: str | os.PathLike) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the ``with`` block: the one place where a benchmark imports code that is
    not an installed package (a peer's checkout given on the command line, ``deploy/transfuse_deploy``)."""
    entry = str(Path(folder).resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


# ------------------------------------------------------------------------------------------------------------- host
def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals: compare figures taken on a quiet machine."""
    return [round(v, 2) for v in os.getloadavg()]


def hardware() -> dict:
    """The library's hardware probe (:func:`transfuse_monai.utils.hardware.probe`) as a dict: CPU, usable ISA,
    native bf16 / int8, CUDA devices. Every results file records it."""
    from transfuse_monai.utils.hardware import probe

    return probe().as_dict()


def cpu_name() -> str:
    """The CPU's model name, as the hardware probe reads it."""
    return hardware()["cpu"]


def cpu_isa() -> str:
    """PyTorch's CPU kernel level and the CPU's class: ``"AVX512 (AVX512-BF16)"``, ``"AVX2 (AVX2)"``, ..."""
    info = hardware()
    return f"{info['torch_capability']} ({info['cpu_kind']})"


def versions(*modules: str) -> dict[str, str | None]:
    """``__version__`` of each module, ``None`` for one that is not installed."""
    found = {}
    for name in modules:
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


# ----------------------------------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], object], n: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn()``. ``sync`` (e.g. a CUDA synchronisation) runs before each call and
    after it, inside the timed span, so that work the call queued on a device is counted."""
    sync = sync or (lambda: None)
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def stats_ms(times: Sequence[float]) -> dict:
    """Median, quartiles (inclusive method), min, max (ms) and count of durations in seconds."""
    ms = sorted(t * 1000 for t in times)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "min": ms[0], "max": ms[-1], "n": len(ms)}


# ------------------------------------------------------------------------------------------------------- formatting
def fmt(value, spec: str = ".2f", none: str = "n/a") -> str:
    """``value`` formatted with ``spec``, or ``none`` when it is ``None``."""
    return none if value is None else format(value, spec)


def fmt_seconds(seconds: float | None) -> str:
    """``m:ss``, or ``n/a``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def md_row(cells: Sequence) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(header: Sequence[str], rows: Sequence[Sequence] = (), align: str = "") -> list[str]:
    """A Markdown table as lines: ``header``, its separator and ``rows``. ``align``: one letter per column, ``r`` for
    a right-aligned one (``---:``), anything else (or a missing letter) left as ``---``."""
    sep = "|" + "".join("---:|" if align[i:i + 1] == "r" else "---|" for i in range(len(header)))
    return [md_row(header), sep, *(md_row(r) for r in rows)]


# ------------------------------------------------------------------------------------------------------------ files
def write_results(out: Path, report: str, data: dict, stem: str = "results", note: str = "") -> None:
    """Write ``<out>/<stem>.md`` (``report``) and ``<out>/<stem>.json`` (``data`` with the :func:`hardware` probe),
    each atomically, and say so."""
    from transfuse_monai.utils.io import atomic_write_json, atomic_write_text

    data = {"hardware": hardware(), **data}
    md, js = atomic_write_text(out / f"{stem}.md", report), atomic_write_json(out / f"{stem}.json", data)
    print(f"written: {md}, {js}" + (f" ({note})" if note else ""), flush=True)


# ------------------------------------------------------------------------------------------------------ subprocesses
def rel(path: Path) -> str:
    """``path`` as typed from the repository root (where the commands run): relative when it is near
    (``../shared/...``), absolute otherwise."""
    r = os.path.relpath(path, REPO)
    return str(path) if r.startswith(os.pardir + os.sep + os.pardir) else r


def shown(cmd: Sequence[str]) -> str:
    """The command line as a user would type it from the repository root."""
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def config_list(files: Sequence[Path]) -> str:
    """A ``monai.bundle --config_file`` list argument of the files, as :func:`rel` writes them."""
    return "[" + ",".join(json.dumps(rel(f)) for f in files) + "]"


def bundle_command(mode: str, configs: Sequence[Path], *overrides: str) -> list[str]:
    """``python -m monai.bundle run <mode> --config_file [configs] <overrides>`` for this interpreter."""
    return [sys.executable, "-m", "monai.bundle", "run", mode, "--config_file", config_list(configs), *overrides]


@dataclass
class LoggedRun:
    """What :func:`run_logged` saw: the exit code (``None``: killed at its timeout), the wall time and the log."""

    returncode: int | None
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` non-blank lines of the log."""
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()][-lines:]


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None,
               new_session: bool = False) -> LoggedRun:
    """Run ``cmd`` from the repository root, its output (after a first line with the command) in ``log``.

    Args:
        cmd: the command; ``sys.executable`` first for a Python one.
        log: the log file (its folder is created).
        env: variables added to this process's environment (``PYTHONUNBUFFERED=1`` always is).
        timeout: seconds after which the command is killed (``returncode`` ``None``); ``None``: no limit.
        new_session: start the command in its own process group and kill the whole group at the timeout or when
            this process is stopped (the GPU kit's stages, whose own children must not outlive them). Without it
            the command stays in this process's group, so whoever stops this process stops it too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    returncode = None
    with open(log, "w") as f:
        f.write(f"$ {shown(cmd)}\n\n")
        f.flush()
        proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=new_session)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # the timeout, or this process interrupted (SIGINT, SIGTERM turned into SystemExit)
            if proc.poll() is None:
                if new_session:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait()
    return LoggedRun(returncode, time.perf_counter() - start, log)


def run_checked(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> float:
    """:func:`run_logged`, announced on stdout; the wall time, or exit with the log's tail when the command fails."""
    print(f"$ {shown(cmd)}\n  (log: {rel(log)})", flush=True)
    run = run_logged(cmd, log, env)
    if not run.ok:
        print("\n".join(run.tail(40)), file=sys.stderr)
        raise SystemExit(f"command failed with exit code {run.returncode} after {run.seconds:.0f} s; see {log}")
    print(f"  done in {fmt_seconds(run.seconds)} (m:ss)", flush=True)
    return run.seconds
