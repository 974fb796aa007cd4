# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Per-image, per-class segmentation metrics with physical spacing: Dice, IoU, Hausdorff distance (maximum and 95th
percentile) and average surface distance, for 2D ``(C, H, W)`` and 3D ``(C, H, W, D)`` images.

The counting and the distances are MONAI's (:func:`~monai.metrics.compute_dice`, :func:`~monai.metrics.compute_iou`,
:func:`~monai.metrics.compute_hausdorff_distance`, :func:`~monai.metrics.compute_average_surface_distance`); this
module turns a task's prediction and label into per-class binary masks, applies the conventions below, and names the
results.

Conventions:
    * Both the prediction and the label of a class empty: Dice and IoU 1, distances 0 (a correct empty prediction).
    * Exactly one of them empty: Dice and IoU 0, distances **NaN** (undefined: there is no surface to measure to).
      Every mean (over classes here, over images in :class:`~transfuse_monai.handlers.SegmentationMetricsReport`)
      skips NaN, so a distance mean is over the cases where it is defined; the Dice of the same class shows the miss.
    * Distances are between the boundary pixels (voxels) of the two masks, MONAI's ``get_mask_edges``. ``"hd"`` is
      the symmetric Hausdorff distance, ``"hd95"`` its 95th percentile version, ``"asd"`` the symmetric average
      surface distance (the mean over the boundary points of both masks of the distance to the other boundary).
    * Units: with ``distance_unit="mm"`` (default) distances are in the units of the spacing (mm for medical
      images) and the spacing is **required** whenever a distance metric is asked for, so pixels are never reported
      as millimetres. With ``distance_unit="px"`` distances are in pixels (voxels) and their keys end in ``_px``
      (``hd_px``, ``hd95_px``, ``asd_px``), e.g. for photographs without a physical pixel size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

__all__ = ["SegmentationMetrics", "SEGMENTATION_METRICS", "DISTANCE_METRICS", "OVERLAP_METRICS"]

#: Overlap metrics (unit-less, in [0, 1]).
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou")
#: Boundary distance metrics (in mm with a spacing, in pixels with ``distance_unit="px"``).
DISTANCE_METRICS: tuple[str, ...] = ("hd", "hd95", "asd")
#: Every metric :class:`SegmentationMetrics` computes, in its default order.
SEGMENTATION_METRICS: tuple[str, ...] = OVERLAP_METRICS + DISTANCE_METRICS

_ACTIVATIONS = ("sigmoid", "softmax")
_UNITS = ("mm", "px")


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    """A plain CPU tensor from a numpy array, a torch tensor or a MONAI MetaTensor."""
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> torch.Tensor
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}.") from e


def _check_index_map(x: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    """Validate a class-index map ``(1, *spatial)`` and return it as ``long``."""
    if x.dtype == torch.bool:
        x = x.long()
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()) or not torch.equal(x, torch.round(x)):
            raise ValueError(f"{what} must hold integer class indices (a class-index map), got non-integer values.")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > num_classes - 1:
        raise ValueError(f"{what} values must be class indices in 0..{num_classes - 1}, got range [{lo}, {hi}].")
    return x.long()


def _check_binary(x: torch.Tensor, what: str) -> torch.Tensor:
    """Validate binary masks and return them as ``bool``."""
    if x.dtype == torch.bool:
        return x
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{what} must be binary (values 0 and 1).")
    return x == 1


class SegmentationMetrics:
    """Per-class Dice, IoU, Hausdorff distance, 95% Hausdorff distance and average surface distance of one image.

    A callable ``(pred, label, spacing=None) -> dict[str, float]`` (e.g. the ``metric_fn`` of
    :class:`~transfuse_monai.handlers.SegmentationMetricsReport`) returning, for every metric ``m`` and every
    reported class ``c``, the key ``"<m>_<c>"`` and the mean over the reported classes ``"<m>"`` (skipping NaN; NaN
    only if every class is NaN). The means come first, then the per-class values. See the module docstring for the
    empty-mask and unit conventions.

    Inputs are channel-first, 2D ``(C, H, W)`` or 3D ``(C, H, W, D)``, numpy arrays or torch tensors (MetaTensor
    too), for a task with ``K = len(class_names)`` classes (class 0 the background):

    - ``activation="sigmoid"``: ``pred`` holds ``K - 1`` probability maps in ``[0, 1]`` (channel ``i`` is class
      ``i + 1``), binarised as ``pred > threshold``. ``label`` is a class-index map ``(1, ...)`` (a binary mask for a
      binary task) or ``K - 1`` binary masks. The background is where no foreground class is.
    - ``activation="softmax"``: ``pred`` holds ``K`` probability (or logit) maps, reduced by argmax, or is a
      class-index map ``(1, ...)``. ``label`` is a class-index map ``(1, ...)`` with values ``0..K-1`` (or its
      one-hot encoding, ``K`` channels).

    Args:
        class_names: names of the classes, index = label value, index 0 the background (e.g.
            ``("background", "lesion")``). They become the key suffixes.
        activation: ``"sigmoid"`` (default) or ``"softmax"``, the task's output activation.
        metrics: metrics to compute, a subset of ``("dice", "iou", "hd", "hd95", "asd")`` (default: all).
        threshold: binarisation threshold of sigmoid probabilities (``pred > threshold``). Defaults to 0.5.
        include_background: also report class 0. Defaults to False.
        distance_unit: ``"mm"`` (default; ``spacing`` required for distance metrics) or ``"px"`` (distances in
            pixels, keys with a ``_px`` suffix, ``spacing`` ignored).

    Raises:
        ValueError: fewer than two or duplicate / empty class names, an unknown activation, metric or unit, or a
            threshold outside ``[0, 1)``.

    Example:
        >>> import numpy as np
        >>> label = np.zeros((1, 32, 32)); label[0, 8:24, 8:24] = 1
        >>> metric = SegmentationMetrics(("background", "lesion"), metrics=("dice", "hd"))
        >>> metric(label * 0.9, label, spacing=(0.5, 0.5))
        {'dice': 1.0, 'hd': 0.0, 'dice_lesion': 1.0, 'hd_lesion': 0.0}
    """

    def __init__(
        self,
        class_names: Sequence[str],
        activation: str = "sigmoid",
        metrics: Sequence[str] = SEGMENTATION_METRICS,
        threshold: float = 0.5,
        include_background: bool = False,
        distance_unit: str = "mm",
    ) -> None:
        if isinstance(class_names, str):
            raise ValueError(f"class_names must be a sequence of names, got the string '{class_names}'.")
        names = [str(n) for n in class_names]
        if len(names) < 2:
            raise ValueError(f"class_names needs the background and at least one class, got {names}.")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique and non-empty, got {names}.")
        activation = str(activation).lower()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation '{activation}'; choose one of {list(_ACTIVATIONS)}.")
        metrics = [metrics] if isinstance(metrics, str) else [str(m).lower() for m in metrics]
        unknown = [m for m in metrics if m not in SEGMENTATION_METRICS]
        if unknown or not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(
                f"metrics must be distinct names among {list(SEGMENTATION_METRICS)}, got {list(metrics)}."
            )
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}.")
        if distance_unit not in _UNITS:
            raise ValueError(f"distance_unit must be one of {list(_UNITS)}, got '{distance_unit}'.")
        self.class_names = tuple(names)
        self.activation = activation
        self.metrics = tuple(metrics)
        self.threshold = float(threshold)
        self.include_background = bool(include_background)
        self.distance_unit = distance_unit

    # ------------------------------------------------------------------------------------------------------------
    # names
    # ------------------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """``K``, the number of classes including the background."""
        return len(self.class_names)

    @property
    def reported_classes(self) -> tuple[str, ...]:
        """Names of the classes that get per-class keys."""
        return self.class_names if self.include_background else self.class_names[1:]

    def metric_name(self, metric: str) -> str:
        """The key stem of ``metric``: the metric itself, or ``<metric>_px`` for a distance in pixels."""
        return f"{metric}_px" if metric in DISTANCE_METRICS and self.distance_unit == "px" else metric

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The key stems (mean keys), in order."""
        return tuple(self.metric_name(m) for m in self.metrics)

    @property
    def units(self) -> dict[str, str]:
        """Unit of each key stem: ``"mm"`` or ``"px"`` for distances, ``""`` for overlap metrics."""
        return {self.metric_name(m): (self.distance_unit if m in DISTANCE_METRICS else "") for m in self.metrics}

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the returned dictionaries, in order."""
        per_class = [f"{n}_{c}" for n in self.metric_names for c in self.reported_classes]
        return self.metric_names + tuple(per_class)

    @property
    def needs_spacing(self) -> bool:
        """Whether a call must give ``spacing`` (distance metrics in mm)."""
        return self.distance_unit == "mm" and any(m in DISTANCE_METRICS for m in self.metrics)

    # ------------------------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------------------------
    def one_hot_pred(self, pred: Any) -> torch.Tensor:
        """The prediction as ``K`` boolean masks ``(K, *spatial)`` (background first).

        Raises:
            ValueError: wrong dimensions or channel count, sigmoid probabilities outside ``[0, 1]``, or an index map
                with values outside ``0..K-1``.
        """
        p = _as_tensor(pred, "pred")
        self._check_dims(p, "pred")
        k = self.num_classes
        if self.activation == "sigmoid":
            if p.shape[0] != k - 1:
                raise ValueError(
                    f"A sigmoid prediction of {k - 1} foreground class(es) {list(self.class_names[1:])} needs "
                    f"{k - 1} channel(s), got shape {tuple(p.shape)}."
                )
            p = p.float()
            if not bool(torch.isfinite(p).all()) or float(p.min()) < 0.0 or float(p.max()) > 1.0:
                raise ValueError(
                    "A sigmoid prediction must be probabilities in [0, 1] (apply the sigmoid to the logits first)."
                )
            fg = p > self.threshold
            return torch.cat([~fg.any(dim=0, keepdim=True), fg], dim=0)
        if p.shape[0] == k:
            index = torch.argmax(p.float(), dim=0, keepdim=True)
        elif p.shape[0] == 1:
            index = _check_index_map(p, k, "A class-index prediction")
        else:
            raise ValueError(
                f"A softmax prediction of {k} classes needs {k} channels (probabilities) or 1 (class indices), "
                f"got shape {tuple(p.shape)}."
            )
        return self._index_to_masks(index)

    def one_hot_label(self, label: Any) -> torch.Tensor:
        """The label as ``K`` boolean masks ``(K, *spatial)`` (background first).

        Raises:
            ValueError: wrong dimensions or channel count, or values that are not class indices ``0..K-1``
                (binary masks for multi-channel labels).
        """
        y = _as_tensor(label, "label")
        self._check_dims(y, "label")
        k = self.num_classes
        if y.shape[0] == 1:
            return self._index_to_masks(_check_index_map(y, k, "The label"))
        if self.activation == "sigmoid" and y.shape[0] == k - 1:
            fg = _check_binary(y, "A multi-channel sigmoid label")
            return torch.cat([~fg.any(dim=0, keepdim=True), fg], dim=0)
        if self.activation == "softmax" and y.shape[0] == k:
            masks = _check_binary(y, "A one-hot label")
            if not bool((masks.sum(dim=0) == 1).all()):
                raise ValueError("A one-hot label must have exactly one class per pixel.")
            return masks
        expected = k - 1 if self.activation == "sigmoid" else k
        raise ValueError(
            f"The label must be a class-index map (1 channel) or have {expected} channels, got shape "
            f"{tuple(y.shape)}."
        )

    def _index_to_masks(self, index: torch.Tensor) -> torch.Tensor:
        return index == torch.arange(self.num_classes).view(-1, *([1] * (index.dim() - 1)))

    @staticmethod
    def _check_dims(x: torch.Tensor, what: str) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"{what} must be channel-first 2D (C, H, W) or 3D (C, H, W, D), got shape {tuple(x.shape)} "
                "(add the channel dimension of a plain mask)."
            )
        if x.numel() == 0:
            raise ValueError(f"{what} is empty (shape {tuple(x.shape)}).")

    @staticmethod
    def _prepare_spacing(spacing: Any, spatial_dims: int) -> list[float]:
        values = _as_tensor(spacing, "spacing").double().flatten().tolist()
        if len(values) == 1:
            values = values * spatial_dims
        if len(values) != spatial_dims:
            raise ValueError(
                f"spacing must be one number or one per spatial dimension ({spatial_dims}), got {len(values)} values."
            )
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"spacing values must be positive and finite, got {values}.")
        return values

    # ------------------------------------------------------------------------------------------------------------
    # computation
    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, pred: Any, label: Any, spacing: Any = None) -> dict[str, float]:
        """Metrics of one image.

        Args:
            pred: the post-activation prediction (see the class description).
            label: the ground truth (see the class description).
            spacing: pixel (voxel) size, one number or one per spatial dimension (``(H, W)`` or ``(H, W, D)``
                order, as the array axes), e.g. a MetaTensor's ``pixdim``. Required for distances in mm.

        Returns:
            ``{"<metric>": mean over classes, ..., "<metric>_<class>": value, ...}`` as Python floats (see
            :attr:`keys`).

        Raises:
            ValueError: invalid inputs, prediction and label of different spatial shapes, or no ``spacing`` where
                distances in mm are asked for.
        """
        p = self.one_hot_pred(pred)
        y = self.one_hot_label(label)
        if p.shape[1:] != y.shape[1:]:
            raise ValueError(
                f"Prediction and label differ in spatial shape: {tuple(p.shape[1:])} and {tuple(y.shape[1:])}."
            )
        spatial_dims = p.dim() - 1
        space: list[float] | None = None
        if self.needs_spacing:
            if spacing is None:
                raise ValueError(
                    f"{', '.join(m for m in self.metrics if m in DISTANCE_METRICS)} in mm need the pixel spacing: "
                    "pass spacing=(...) (e.g. the image's pixdim), or build SegmentationMetrics with "
                    "distance_unit='px' to report distances in pixels."
                )
            space = self._prepare_spacing(spacing, spatial_dims)
        if not self.include_background:
            p, y = p[1:], y[1:]
        values = self._compute(p[None].float(), y[None].float(), space)  # (batch 1, classes, *spatial)

        out: dict[str, float] = {}
        for m in self.metrics:
            per_class = values[m]
            finite = [v for v in per_class if not math.isnan(v)]
            out[self.metric_name(m)] = float(np.mean(finite)) if finite else float("nan")
        for m in self.metrics:
            for c, v in zip(self.reported_classes, values[m]):
                out[f"{self.metric_name(m)}_{c}"] = v
        return out

    def _compute(self, p: torch.Tensor, y: torch.Tensor, spacing: list[float] | None) -> dict[str, list[float]]:
        """Per-class values of every metric for one-hot float tensors ``(1, N, *spatial)``."""
        values: dict[str, list[float]] = {}
        if "dice" in self.metrics:  # both empty: 1, one empty: 0 (MONAI with ignore_empty=False)
            values["dice"] = compute_dice(p, y, include_background=True, ignore_empty=False)[0].tolist()
        if "iou" in self.metrics:
            values["iou"] = compute_iou(p, y, include_background=True, ignore_empty=False)[0].tolist()
        distance_metrics = [m for m in self.metrics if m in DISTANCE_METRICS]
        if not distance_metrics:
            return values
        reduce = tuple(range(2, p.dim()))
        pred_any, label_any = p.sum(dim=reduce)[0] > 0, y.sum(dim=reduce)[0] > 0
        both = torch.nonzero(pred_any & label_any).flatten()
        for m in distance_metrics:
            values[m] = [0.0 if not (a or b) else float("nan") for a, b in zip(pred_any.tolist(), label_any.tolist())]
        if both.numel() == 0:
            return values
        ps, ys = p[:, both], y[:, both]
        with warnings.catch_warnings():  # MONAI's own deprecated-argument notice in get_mask_edges
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            results = {}
            if "hd" in distance_metrics:
                results["hd"] = compute_hausdorff_distance(ps, ys, include_background=True, spacing=spacing)
            if "hd95" in distance_metrics:
                results["hd95"] = compute_hausdorff_distance(
                    ps, ys, include_background=True, percentile=95, spacing=spacing
                )
            if "asd" in distance_metrics:
                results["asd"] = compute_average_surface_distance(
                    ps, ys, include_background=True, symmetric=True, spacing=spacing
                )
        for m, result in results.items():
            for i, c in enumerate(both.tolist()):
                values[m][c] = float(result[0, i])
        return values

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(class_names={list(self.class_names)}, activation='{self.activation}', "
            f"metrics={list(self.metrics)}, threshold={self.threshold}, include_background={self.include_background}, "
            f"distance_unit='{self.distance_unit}')"
        )
