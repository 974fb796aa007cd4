"""Evaluation metrics for polyp segmentation (see :mod:`transfuse_monai.metrics.polyp`)."""

from .polyp import (
    EPS,
    METRIC_KEYS,
    PolypMetrics,
    dice_iou,
    e_measure,
    e_measure_curve,
    mae,
    s_measure,
    summarize,
    weighted_f_measure,
)

__all__ = [
    "EPS",
    "METRIC_KEYS",
    "PolypMetrics",
    "dice_iou",
    "e_measure",
    "e_measure_curve",
    "mae",
    "s_measure",
    "summarize",
    "weighted_f_measure",
]
