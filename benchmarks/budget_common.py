"""Plumbing shared by the real-data budget runs (``polyp_budget_run.py``, ``isic_budget_run.py``): running bundle
commands from the repository root with logs, and formatting their figures."""

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


#: ``train_state.json`` fields every budget run records (config expressions, evaluated when training ends).
STATE_FIELDS = {
    "iterations": "@train#trainer.state.iteration",
    "epoch_length": "@train#trainer.state.epoch_length",
    "loader_batches": "len(@train#dataloader)",
    "n_train": "len(@train#dataset)",
    "n_val": "len(@validate#dataset)",
    "loop_seconds": "@train#trainer.state.times.get('COMPLETED')",
    "torch_threads": "torch.get_num_threads()",
    "parameters": "sum(p.numel() for p in @network.parameters())",
    "loss_first": "[float(l) for _, l in @budget_metric_logger.loss[:10]]",
    "loss_last": "[float(l) for _, l in @budget_metric_logger.loss[-10:]]",
}


def metric_history(name: str) -> str:
    """Config expression of a validation metric's history logged by ``budget_metric_logger``: ``[[round, value]]``."""
    return f"[[int(i), float(v)] for i, v in @budget_metric_logger.metrics['{name}']]"


def budget_override(val_every: int | None, initialize: list[str], state_fields: dict[str, str],
                    extra_imports: tuple[str, ...] = (), **extra) -> dict:
    """The training override both budget runs share: imports, MONAI's ``MetricLogger`` on the validator, the given
    ``+initialize`` statements (time limits), ``train_state.json`` (:data:`STATE_FIELDS` plus ``state_fields``)
    written at ``finalize``, validation every ``val_every`` iterations, and any ``extra`` config ids."""
    fields = {**STATE_FIELDS, **state_fields}
    record = "{" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) + "}"
    override = {
        # import statements anywhere in a config are evaluated before any expression (they bind the names below)
        "budget_imports": ["$import json", "$import pathlib", "$from ignite.engine import Events",
                           "$from ignite.handlers import TimeLimit", *extra_imports],
        **extra,
        "budget_metric_logger": {"_target_": "MetricLogger", "evaluator": "@validate#evaluator"},
        "+train#handlers": ["@budget_metric_logger"],
        "+initialize": list(initialize),
        "+finalize": [
            "$pathlib.Path(@output_dir).mkdir(parents=True, exist_ok=True)",
            f"$pathlib.Path(@output_dir, 'train_state.json').write_text(json.dumps({record}, indent=2))",
        ],
    }
    if val_every:
        override["train#trainer#epoch_length"] = int(val_every)
    return override
