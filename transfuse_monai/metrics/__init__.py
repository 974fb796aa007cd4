"""Evaluation metrics: polyp segmentation (:mod:`~transfuse_monai.metrics.polyp`) and per-image binary Jaccard /
Dice / accuracy (:mod:`~transfuse_monai.metrics.binary`, ISIC 2017)."""

from .binary import BINARY_METRIC_KEYS, BinarySegmentationMetrics, binary_segmentation_metrics

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
    "BINARY_METRIC_KEYS",
    "BinarySegmentationMetrics",
    "binary_segmentation_metrics",
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
