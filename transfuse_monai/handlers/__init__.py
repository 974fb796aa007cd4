"""Ignite/MONAI handlers of transfuse-monai."""

from transfuse_monai.handlers.checkpoint import AtomicCheckpointSaver, ResumableCheckpoint
from transfuse_monai.handlers.cross_validation import aggregate_folds
from transfuse_monai.handlers.exception_hooks import add_exception_hook
from transfuse_monai.handlers.gradient_clipping import GradientClipping
from transfuse_monai.handlers.metrics_report import (
    SegmentationMetricsReport,
    format_class_table,
    format_table,
    split_class_metrics,
)
from transfuse_monai.handlers.nonfinite import StopOnNonFiniteLoss
from transfuse_monai.handlers.overlay import OVERLAY_COLORS, OverlayWriter
from transfuse_monai.handlers.report import InferenceReport
from transfuse_monai.handlers.timing import SecondsPerVolume
from transfuse_monai.handlers.validation import FinalValidationHandler

__all__ = [
    "AtomicCheckpointSaver",
    "FinalValidationHandler",
    "GradientClipping",
    "InferenceReport",
    "OVERLAY_COLORS",
    "OverlayWriter",
    "ResumableCheckpoint",
    "SecondsPerVolume",
    "SegmentationMetricsReport",
    "StopOnNonFiniteLoss",
    "add_exception_hook",
    "aggregate_folds",
    "format_class_table",
    "format_table",
    "split_class_metrics",
]
