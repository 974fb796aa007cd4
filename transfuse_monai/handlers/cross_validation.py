# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Cross-validation report: the folds' evaluation summaries gathered into one table (the paper's Table 4 layout)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfuse_monai.utils import atomic_write_json, atomic_write_text

__all__ = ["aggregate_folds"]


def _fold_values(eval_dir: Path, report_prefix: str, speed_prefix: str) -> dict[str, float]:
    report = eval_dir / f"{report_prefix}summary.json"
    if not report.is_file():
        raise FileNotFoundError(f"No evaluation summary '{report.name}' in '{eval_dir}': evaluate this fold first.")
    summary = json.loads(report.read_text())
    if not summary:
        raise ValueError(f"'{report}' is empty.")
    values = summary.get("all images") or list(summary.values())[-1]
    out = {k: (float("nan") if v is None else float(v)) for k, v in values.items()}
    speed = eval_dir / f"{speed_prefix}summary.json"
    if speed.is_file():
        timing = json.loads(speed.read_text())
        out["seconds_per_volume"] = float(timing.get("seconds_per_volume", float("nan")))
        if "parameters" in timing:
            out["parameters"] = float(timing["parameters"])
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0


def aggregate_folds(
    eval_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    metrics: Sequence[str] = ("dice_PZ", "dice_TZ", "dice", "hd95", "asd"),
    report_prefix: str = "segmentation_",
    speed_prefix: str = "seconds_",
    method: str = "TransFuse-S (this bundle)",
    reference: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Cross-validation results in the layout of the paper's Table 4: PZ, TZ and mean Dice as mean +- standard
    deviation over the folds (sample standard deviation, ``ddof=1``), parameters and seconds per volume, beside
    published figures (``reference``, e.g. the paper's :data:`~transfuse_monai.tasks.prostate.PAPER_TABLE4`).

    Each folder of ``eval_dirs`` is one fold's evaluation output (``evaluate.json`` with ``--fold k``): the
    per-class report ``<report_prefix>summary.json`` and the timing ``<speed_prefix>summary.json``.

    Args:
        eval_dirs: the folds' evaluation folders.
        output_dir: where to write ``cross_validation.json`` and ``cross_validation.md`` (atomically); None writes
            nothing.
        metrics: the summary keys reported per fold and over the folds.
        report_prefix: prefix of the evaluation report files.
        speed_prefix: prefix of the timing files.
        method: name of this model's row.
        reference: rows printed above this model's: method name -> ``{"dice_PZ", "dice_TZ", "dice",
            "seconds_per_volume"}`` (NaN where not published).

    Returns:
        ``{"folds": {dir name: values}, "mean": {...}, "std": {...}, "markdown": table}``.

    Raises:
        ValueError: no folder given.
        FileNotFoundError: a folder without an evaluation summary.
    """
    if not eval_dirs:
        raise ValueError("aggregate_folds needs the evaluation folder of at least one fold.")
    folds = {Path(d).name or str(d): _fold_values(Path(d), report_prefix, speed_prefix) for d in eval_dirs}
    keys = [*metrics, "seconds_per_volume", "parameters"]
    mean, std = {}, {}
    for key in keys:
        mean[key], std[key] = _mean_std([v.get(key, float("nan")) for v in folds.values()])

    def cell(m: float, s: float | None = None, digits: int = 4) -> str:
        if math.isnan(m):
            return "n/a"
        return f"{m:.{digits}f}" + (f" +- {s:.{digits}f}" if s is not None and not math.isnan(s) else "")

    params = mean["parameters"]
    rows = [
        "| method | params (M) | PZ Dice | TZ Dice | mean Dice | HD95 (mm) | ASD (mm) | s / volume |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ref in (reference or {}).items():
        rows.append(
            f"| {name} | n/a | {cell(ref['dice_PZ'])} | {cell(ref['dice_TZ'])} | {cell(ref['dice'])} | n/a | n/a | "
            f"{cell(ref['seconds_per_volume'], digits=3)} |"
        )
    rows.append(
        f"| {method}, {len(folds)} fold(s) | {cell(params / 1e6, digits=1) if not math.isnan(params) else 'n/a'} | "
        + " | ".join(cell(mean.get(k, float("nan")), std.get(k)) for k in ("dice_PZ", "dice_TZ", "dice", "hd95", "asd"))
        + f" | {cell(mean['seconds_per_volume'], std['seconds_per_volume'], digits=3)} |"
    )
    per_fold = ["", "| fold | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, values in folds.items():
        per_fold.append(f"| {name} | " + " | ".join(cell(values.get(k, float("nan"))) for k in keys) + " |")
    markdown = "\n".join(rows + per_fold)
    result = {"folds": folds, "mean": mean, "std": std, "markdown": markdown}
    if output_dir is not None:
        out = Path(output_dir)

        def safe(obj):
            if isinstance(obj, Mapping):
                return {k: safe(v) for k, v in obj.items()}
            return None if isinstance(obj, float) and math.isnan(obj) else obj

        atomic_write_json(out / "cross_validation.json", safe({k: v for k, v in result.items() if k != "markdown"}))
        atomic_write_text(out / "cross_validation.md", markdown + "\n")
    return result
