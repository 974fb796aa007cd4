"""Evaluation metrics: polyp segmentation (:mod:`~transfuse_monai.metrics.polyp`), per-image binary Jaccard /
Dice / accuracy (:mod:`~transfuse_monai.metrics.binary`, ISIC 2017) and per-class Dice / IoU / surface distances in
mm for binary and multi-class 2D/3D tasks (:mod:`~transfuse_monai.metrics.segmentation`)."""

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
from .segmentation import DISTANCE_METRICS, OVERLAP_METRICS, SEGMENTATION_METRICS, SegmentationMetrics

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
    "DISTANCE_METRICS",
    "OVERLAP_METRICS",
    "SEGMENTATION_METRICS",
    "SegmentationMetrics",
]
