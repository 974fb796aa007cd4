# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Per-image metrics of an evaluator, grouped by test set, written as CSV/JSON and printed as tables (one row per
set, and one row per class for per-class metrics)."""

from __future__ import annotations

import csv
import inspect
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

from transfuse_monai.data.formats import file_stem
from transfuse_monai.utils import atomic_path, atomic_write_json, atomic_write_text
from transfuse_monai.utils.distributed import gather_per_rank, interleave_ranks, is_main_process

__all__ = ["SegmentationMetricsReport", "format_table", "format_class_table", "split_class_metrics", "item_name"]

logger = logging.getLogger(__name__)


def item_name(batch_item: Mapping, output_item: Mapping, name_key: str, image_key: str) -> str:
    """The name of a decollated item in reports: its ``name_key`` entry, else the stem of its image's source file
    (:func:`~transfuse_monai.data.formats.file_stem`), else ``"?"``."""
    if name_key in batch_item:
        return str(batch_item[name_key])
    for source in (output_item, batch_item):
        image = source.get(image_key)
        meta = getattr(image, "meta", None)
        if meta and "filename_or_obj" in meta:
            return file_stem(str(meta["filename_or_obj"]))
    return "?"


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN when there are none)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _json_safe(obj: Any) -> Any:
    """NaN -> None (``null``), so that the JSON file is standard JSON."""
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def format_table(summary: Mapping[str, Mapping[str, float]], metrics: Sequence[str], digits: int = 4) -> str:
    """A Markdown table with one row per group (test set) and one column per metric."""
    header = "| set | n | " + " | ".join(metrics) + " |"
    lines = [header, "|---|---|" + "---|" * len(metrics)]
    for group, values in summary.items():
        cells = []
        for m in metrics:
            v = values.get(m, float("nan"))
            cells.append("n/a" if _is_missing(v) else f"{v:.{digits}f}")
        lines.append(f"| {group} | {int(values.get('n', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_class_metrics(keys: Sequence[str], metric_fn: Any = None) -> tuple[list[str], list[str]]:
    """Find the per-class structure ``"<metric>_<class>"`` of metric keys.

    If ``metric_fn`` declares it (``metric_names`` and ``reported_classes`` attributes, as
    :class:`~transfuse_monai.metrics.SegmentationMetrics` does), that is used. Otherwise a key ``k`` is a per-class
    value of metric ``m`` when ``m`` is itself a key (the mean over classes) and ``k`` is ``m + "_" + <class>``
    (the longest such ``m``).

    Args:
        keys: the metric keys of a report.
        metric_fn: the metric callable, optional.

    Returns:
        ``(metrics, classes)`` in order of first appearance; both empty when the keys have no per-class values.
    """
    keys = list(keys)
    declared_metrics = getattr(metric_fn, "metric_names", None)
    declared_classes = getattr(metric_fn, "reported_classes", None)
    if declared_metrics is not None and declared_classes is not None:
        metrics = [m for m in declared_metrics if m in keys]
        classes = [c for c in declared_classes if any(f"{m}_{c}" in keys for m in metrics)]
        return (metrics, classes) if classes else ([], [])
    metrics, classes = [], []
    for k in keys:
        stems = [m for m in keys if m != k and k.startswith(m + "_")]
        if not stems:
            continue
        stem = max(stems, key=len)
        if stem not in metrics:
            metrics.append(stem)
        if k[len(stem) + 1 :] not in classes:
            classes.append(k[len(stem) + 1 :])
    return metrics, classes


def format_class_table(
    values: Mapping[str, float],
    metrics: Sequence[str],
    classes: Sequence[str],
    units: Mapping[str, str] | None = None,
    digits: int = 4,
) -> str:
    """An aligned Markdown table with one row per class and one column per metric (``values["<metric>_<class>"]``),
    plus a ``mean`` row when ``values`` has the means ``values["<metric>"]``.

    Args:
        values: metric values, e.g. one group of a report summary.
        metrics: the metric columns.
        classes: the class rows.
        units: unit of each metric, shown in its header (e.g. ``{"hd95": "mm"}`` gives ``hd95 (mm)``).
        digits: decimals of the values.

    Example:
        >>> print(format_class_table({"dice_liver": 0.9, "hd_liver": 4.25}, ["dice", "hd"], ["liver"], {"hd": "mm"}))
        | class  |   dice | hd (mm) |
        |:-------|-------:|--------:|
        | liver  | 0.9000 |  4.2500 |
    """
    units = units or {}
    header = ["class"] + [f"{m} ({units[m]})" if units.get(m) else m for m in metrics]

    def cell(key: str) -> str:
        v = values.get(key)
        return "n/a" if _is_missing(v) else f"{float(v):.{digits}f}"  # type: ignore[arg-type]

    rows = [[str(c)] + [cell(f"{m}_{c}") for m in metrics] for c in classes]
    if any(m in values for m in metrics):
        rows.append(["mean"] + [cell(m) for m in metrics])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[0] = max(widths[0], 6)

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    separator = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:]) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def _accepts_spacing(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "spacing" or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


class SegmentationMetricsReport:
    """Evaluator handler computing per-image metrics with a plain function and reporting them per group.

    After each iteration it evaluates ``metric_fn(pred, label)`` on every decollated item (``pred`` the
    post-activation prediction, ``label`` the ground truth, channel-first, of the same spatial size; numpy arrays).
    If ``metric_fn`` takes a ``spacing`` argument it gets ``metric_fn(pred, label, spacing=...)``, the pixel (voxel)
    size of the item: the batch entry ``spacing_key`` if present, otherwise the ``pixdim`` of the label (or
    prediction) MetaTensor when its reader recorded a physical spacing (``"pixdim"`` or ``"spacing"`` in its meta
    data, e.g. NIfTI or ITK files; the current affine is used, so resampling is accounted for), otherwise ``None``.

    When the run completes it writes ``<output_dir>/<prefix>per_image.csv`` (one row per image: group, name,
    metrics), ``<output_dir>/<prefix>summary.json`` (means per group and over all images; NaN written as ``null``),
    logs the table, and stores the means in ``engine.state.metrics`` as ``"<group>/<metric>"``. Means skip NaN
    values (e.g. a distance that is undefined because a class is missing). When the metric keys are per class,
    ``"<metric>_<class>"`` (see :func:`split_class_metrics`), the set table shows the metrics' means only and a
    per-class table (one row per class, one column per metric, units from ``metric_fn.units`` in the headers) is
    printed for the whole evaluation and written, for every group, to ``<output_dir>/<prefix>per_class.md``. Files
    are written atomically (:func:`~transfuse_monai.utils.atomic_path`), so an interrupted run leaves no partial
    report.

    In a distributed run (``torchrun``, each rank evaluating its share through a
    :class:`~monai.data.DistributedSampler` with ``even_divisible=False``) the rows of all ranks are gathered when
    the run completes, in the dataset order (the sampler gives rank ``r`` the images ``r, r + world_size, ...``),
    so that the summary covers every image once. Every rank gets the same ``rows``, ``summary`` and
    ``engine.state.metrics``; only rank 0 writes the files and prints the tables. Every rank must therefore attach
    the handler (the gather is a collective operation); a padding sampler (``even_divisible=True``) would count its
    repeated images twice.

    Args:
        metric_fn: callable ``(pred, label[, spacing=...]) -> dict[str, float]`` for one image (e.g.
            :class:`~transfuse_monai.metrics.PolypMetrics` or :class:`~transfuse_monai.metrics.SegmentationMetrics`).
        output_dir: folder of the report files.
        group_key: batch key holding each item's group (test-set name); items without it form group ``"all"``.
        name_key: batch key holding each item's name (the image file stem is used otherwise).
        prefix: file name prefix.
        pred_key: key of the prediction in the engine output.
        label_key: key of the label in the engine output (or, when the output lacks it, in the batch: keys that
            preprocessing adds, e.g. a copy of the mask at its original size, stay in the batch).
        image_key: key of the image, whose file name names the item when ``name_key`` is absent.
        print_table: print the tables to stdout (otherwise they are logged at INFO level).
        title: a line printed (or logged) above the table, to tell apart several reports of one run.
        spacing_key: batch (or output) key holding an item's spacing, which takes precedence over the meta data.
    """

    def __init__(
        self,
        metric_fn: Callable[..., Mapping[str, float]],
        output_dir: str | os.PathLike,
        group_key: str = "set",
        name_key: str = "name",
        prefix: str = "metrics_",
        pred_key: str = Keys.PRED,
        label_key: str = Keys.LABEL,
        image_key: str = Keys.IMAGE,
        print_table: bool = True,
        title: str | None = None,
        spacing_key: str = "spacing",
    ) -> None:
        if not callable(metric_fn):
            raise TypeError(f"metric_fn must be callable, got {type(metric_fn).__name__}.")
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
        self.spacing_key = spacing_key
        self.takes_spacing = _accepts_spacing(metric_fn)
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

    def spacing_of(self, batch_item: Mapping, output_item: Mapping, label: Any, pred: Any) -> Any:
        """The spacing passed to ``metric_fn`` for one item (see the class description), or None."""
        for source in (batch_item, output_item):
            if self.spacing_key in source and source[self.spacing_key] is not None:
                return source[self.spacing_key]
        for x in (label, pred):
            meta = getattr(x, "meta", None)
            if isinstance(x, torch.Tensor) and meta and ("pixdim" in meta or "spacing" in meta):
                spatial_dims = x.dim() - 1
                spacing = x.pixdim  # type: ignore[union-attr]  # MetaTensor: from the current affine
                if len(spacing) >= spatial_dims:
                    return [float(s) for s in spacing[:spatial_dims]]
        return None

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, Mapping):  # not decollated: a single item
            batch, output = [batch], [output]
        for b, o in zip(batch, output):
            pred = o[self.pred_key]
            label = o[self.label_key] if self.label_key in o else b[self.label_key]
            name = item_name(b, o, self.name_key, self.image_key)
            spacing = self.spacing_of(b, o, label, pred) if self.takes_spacing else None
            pred = pred.detach().float().cpu() if isinstance(pred, torch.Tensor) else torch.as_tensor(pred).float()
            label = label.detach().cpu() if isinstance(label, torch.Tensor) else torch.as_tensor(label)
            if pred.shape[1:] != label.shape[1:]:
                raise ValueError(
                    f"Prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in spatial shape for "
                    f"'{name}'; invert the resize before the report."
                )
            row: dict[str, Any] = {"set": str(b.get(self.group_key, "all")), "name": name}
            p, y = pred.numpy(), label.numpy()
            values = self.metric_fn(p, y, spacing=spacing) if self.takes_spacing else self.metric_fn(p, y)
            row.update({k: float(v) for k, v in values.items()})
            self.rows.append(row)

    def _metric_keys(self) -> list[str]:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in ("set", "name") and k not in keys)
        return keys

    def _summarize(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            groups[row["set"]].append(row)
        metrics = self._metric_keys()
        summary: dict[str, dict[str, float]] = {}
        for group, rows in list(groups.items()) + ([("all images", self.rows)] if len(groups) > 1 else []):
            summary[group] = {
                "n": len(rows),
                **{m: _nanmean([r.get(m, float("nan")) for r in rows]) for m in metrics},
            }
        return summary

    def epoch_completed(self, engine) -> None:
        self.rows = interleave_ranks(gather_per_rank(self.rows))
        if not self.rows:
            if is_main_process():
                logger.warning("SegmentationMetricsReport: no images were evaluated.")
            return
        self.summary = self._summarize()
        metrics = self._metric_keys()
        for group, values in self.summary.items():
            for m in metrics:
                engine.state.metrics[f"{group}/{m}"] = values[m]
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.output_dir / f"{self.prefix}per_image.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["set", "name", *metrics], restval="nan")
                writer.writeheader()
                writer.writerows(self.rows)
        atomic_write_json(self.output_dir / f"{self.prefix}summary.json", _json_safe(self.summary))

        class_metrics, classes = split_class_metrics(metrics, self.metric_fn)
        per_class_keys = {f"{m}_{c}" for m in class_metrics for c in classes}
        table = format_table(self.summary, [m for m in metrics if m not in per_class_keys])
        if self.title:
            table = f"{self.title}\n{table}"
        if classes:
            units = getattr(self.metric_fn, "units", None) or {}
            sections = []
            for group, values in self.summary.items():
                heading = f"Per-class metrics, {group} ({int(values['n'])} images)"
                sections.append(f"{heading}\n\n{format_class_table(values, class_metrics, classes, units)}\n")
            document = (f"# {self.title}\n\n" if self.title else "") + "\n".join(sections)
            atomic_write_text(self.output_dir / f"{self.prefix}per_class.md", document)
            overall = list(self.summary)[-1]
            table += f"\nPer-class metrics, {overall}:\n" + format_class_table(
                self.summary[overall], class_metrics, classes, units
            )
        if self.print_table:
            print(table, flush=True)
        else:
            logger.info("Per-set metrics:\n%s", table)
