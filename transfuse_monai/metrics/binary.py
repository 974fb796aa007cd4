# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Per-image binary segmentation metrics of the ISIC 2017 lesion-segmentation challenge.

ISIC 2017 (Part 1) ranks methods by the mean over the test images of the per-image **Jaccard index**; Dice and
pixel **accuracy** are reported alongside, and the TransFuse paper reports all three. Each image's probability map is
binarised as ``pred > threshold`` (as the TransFuse evaluation does) and compared with the binary mask; the
counting is MONAI's (:func:`monai.metrics.get_confusion_matrix`, :func:`monai.metrics.compute_iou`,
:func:`monai.metrics.compute_dice`), with no smoothing term. When both the binarised prediction and the mask are
empty, Jaccard and Dice are 1 (a correct empty prediction).

Inputs follow :mod:`transfuse_monai.metrics.polyp`: ``pred`` a probability map in ``[0, 1]`` and ``gt`` a binary
mask (``bool`` or ``0``/``1``), both ``(H, W)`` or ``(1, H, W)``, numpy arrays or torch tensors.

Example:
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), dtype=bool); gt[:2] = True
    >>> pred = np.zeros((4, 4)); pred[:1] = 0.9
    >>> {k: round(v, 4) for k, v in binary_segmentation_metrics(pred, gt).items()}
    {'jaccard': 0.5, 'dice': 0.6667, 'accuracy': 0.75}
"""

from __future__ import annotations

from typing import Any

import torch

from monai.metrics import compute_confusion_matrix_metric, compute_dice, compute_iou, get_confusion_matrix

from .polyp import prepare_binary_pair

__all__ = ["BINARY_METRIC_KEYS", "BinarySegmentationMetrics", "binary_segmentation_metrics"]

#: Keys of :func:`binary_segmentation_metrics`, in order.
BINARY_METRIC_KEYS: tuple[str, ...] = ("jaccard", "dice", "accuracy")


def binary_segmentation_metrics(pred: Any, gt: Any, threshold: float = 0.5) -> dict[str, float]:
    """Jaccard index, Dice coefficient and pixel accuracy of one image.

    Args:
        pred: probability map in ``[0, 1]``, shape ``(H, W)`` or ``(1, H, W)``.
        gt: binary mask of the same shape.
        threshold: the prediction is binarised as ``pred > threshold``.

    Returns:
        ``{"jaccard", "dice", "accuracy"}`` as Python floats in ``[0, 1]``.

    Raises:
        ValueError: non-2D or empty input, shapes that differ, non-finite ``pred`` or values outside ``[0, 1]`` (a
            logit map passed by mistake), a ``gt`` that is not binary, or a ``threshold`` outside ``[0, 1)``.
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}.")
    p, g = prepare_binary_pair(pred, gt)
    # (batch, channel, H, W) tensors, as MONAI's metric functions expect
    y_pred = torch.from_numpy(p > float(threshold))[None, None].float()
    y = torch.from_numpy(g)[None, None].float()
    jaccard = compute_iou(y_pred, y, include_background=True, ignore_empty=False)
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)
    accuracy = compute_confusion_matrix_metric("accuracy", get_confusion_matrix(y_pred, y, include_background=True))
    return {"jaccard": float(jaccard), "dice": float(dice), "accuracy": float(accuracy)}


class BinarySegmentationMetrics:
    """:func:`binary_segmentation_metrics` as a callable ``(pred, gt) -> dict`` with fixed options, e.g. the
    ``metric_fn`` of :class:`~transfuse_monai.handlers.SegmentationMetricsReport`.

    Args:
        threshold: binarisation threshold (``pred > threshold``).
        suffix: appended to every key (``"_orig"`` gives ``jaccard_orig``, ...), to tell apart several reports of
            the same images (e.g. at two resolutions).

    Example:
        >>> import numpy as np
        >>> gt = np.ones((2, 2))
        >>> BinarySegmentationMetrics(suffix="_orig")(gt * 0.8, gt)
        {'jaccard_orig': 1.0, 'dice_orig': 1.0, 'accuracy_orig': 1.0}
    """

    def __init__(self, threshold: float = 0.5, suffix: str = "") -> None:
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}.")
        self.threshold = float(threshold)
        self.suffix = str(suffix)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the returned dictionaries, in order."""
        return tuple(k + self.suffix for k in BINARY_METRIC_KEYS)

    def __call__(self, pred: Any, gt: Any) -> dict[str, float]:
        values = binary_segmentation_metrics(pred, gt, self.threshold)
        return {k + self.suffix: v for k, v in values.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, suffix={self.suffix!r})"
