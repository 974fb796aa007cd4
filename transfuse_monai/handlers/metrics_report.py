# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Per-image metrics of an evaluator, grouped by test set, written as CSV/JSON and printed as a table."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.utils import CommonKeys as Keys

__all__ = ["SegmentationMetricsReport", "format_table"]

logger = logging.getLogger(__name__)


def _name_of(batch_item: Mapping, output_item: Mapping, name_key: str, image_key: str) -> str:
    if name_key in batch_item:
        return str(batch_item[name_key])
    for source in (output_item, batch_item):
        image = source.get(image_key)
        meta = getattr(image, "meta", None)
        if meta and "filename_or_obj" in meta:
            return Path(str(meta["filename_or_obj"])).stem
    return "?"


def format_table(summary: Mapping[str, Mapping[str, float]], metrics: Sequence[str], digits: int = 4) -> str:
    """A Markdown table with one row per group (test set) and one column per metric."""
    header = "| set | n | " + " | ".join(metrics) + " |"
    lines = [header, "|---|---|" + "---|" * len(metrics)]
    for group, values in summary.items():
        cells = []
        for m in metrics:
            v = values.get(m, float("nan"))
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}")
        lines.append(f"| {group} | {int(values.get('n', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class SegmentationMetricsReport:
    """Evaluator handler computing per-image metrics with a plain function and reporting them per group.

    After each iteration it evaluates ``metric_fn(pred, label)`` on every decollated item (``pred`` a probability
    map, ``label`` a binary mask of the same size, channel-first). When the run completes it writes
    ``<output_dir>/<prefix>per_image.csv`` (one row per image: group, name, metrics),
    ``<output_dir>/<prefix>summary.json`` (means per group and over all images), logs the table, and stores the means
    in ``engine.state.metrics`` as ``"<group>/<metric>"``. Files are written to a temporary name and renamed, so an
    interrupted run leaves no partial report.

    Args:
        metric_fn: callable ``(pred, label) -> dict[str, float]`` for one image (e.g.
            :class:`~transfuse_monai.metrics.PolypMetrics`).
        output_dir: folder of the report files.
        group_key: batch key holding each item's group (test-set name); items without it form group ``"all"``.
        name_key: batch key holding each item's name (the image file stem is used otherwise).
        prefix: file name prefix.
        pred_key: key of the prediction in the engine output.
        label_key: key of the label in the engine output (or, when the output lacks it, in the batch: keys that
            preprocessing adds, e.g. a copy of the mask at its original size, stay in the batch).
        print_table: print the table to stdout (otherwise it is logged at INFO level).
        title: a line printed (or logged) above the table, to tell apart several reports of one run.
    """

    def __init__(
        self,
        metric_fn: Callable[[Any, Any], Mapping[str, float]],
        output_dir: str | os.PathLike,
        group_key: str = "set",
        name_key: str = "name",
        prefix: str = "metrics_",
        pred_key: str = Keys.PRED,
        label_key: str = Keys.LABEL,
        image_key: str = Keys.IMAGE,
        print_table: bool = True,
        title: str | None = None,
    ) -> None:
        self.metric_fn = metric_fn
        self.output_dir = Path(output_dir)
        self.group_key = group_key
        self.name_key = name_key
        self.prefix = prefix
        self.pred_key = pred_key
        self.label_key = label_key
        self.image_key = image_key
        self.print_table = print_table
        self.title = title
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, dict[str, float]] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine=None) -> None:
        self.rows = []
        self.summary = {}

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, Mapping):  # not decollated: a single item
            batch, output = [batch], [output]
        for b, o in zip(batch, output):
            pred = o[self.pred_key]
            label = o[self.label_key] if self.label_key in o else b[self.label_key]
            pred = pred.detach().float().cpu() if isinstance(pred, torch.Tensor) else torch.as_tensor(pred).float()
            label = label.detach().cpu() if isinstance(label, torch.Tensor) else torch.as_tensor(label)
            if pred.shape != label.shape:
                raise ValueError(
                    f"Prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape for "
                    f"'{_name_of(b, o, self.name_key, self.image_key)}'; invert the resize before the report."
                )
            row: dict[str, Any] = {
                "set": str(b.get(self.group_key, "all")),
                "name": _name_of(b, o, self.name_key, self.image_key),
            }
            row.update({k: float(v) for k, v in self.metric_fn(pred.numpy(), label.numpy()).items()})
            self.rows.append(row)

    def _summarize(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            groups[row["set"]].append(row)
        metrics = [k for k in self.rows[0] if k not in ("set", "name")] if self.rows else []
        summary: dict[str, dict[str, float]] = {}
        for group, rows in list(groups.items()) + ([("all images", self.rows)] if len(groups) > 1 else []):
            summary[group] = {"n": len(rows), **{m: float(np.mean([r[m] for r in rows])) for m in metrics}}
        return summary

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def epoch_completed(self, engine) -> None:
        if not self.rows:
            logger.warning("SegmentationMetricsReport: no images were evaluated.")
            return
        self.summary = self._summarize()
        metrics = [k for k in self.rows[0] if k not in ("set", "name")]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.output_dir / f"{self.prefix}per_image.csv"
        tmp = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["set", "name", *metrics])
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, csv_path)
        self._write_atomic(self.output_dir / f"{self.prefix}summary.json", json.dumps(self.summary, indent=2) + "\n")
        for group, values in self.summary.items():
            for m in metrics:
                engine.state.metrics[f"{group}/{m}"] = values[m]
        table = format_table(self.summary, metrics)
        if self.title:
            table = f"{self.title}\n{table}"
        if self.print_table:
            print(table, flush=True)
        else:
            logger.info("Per-set metrics:\n%s", table)
