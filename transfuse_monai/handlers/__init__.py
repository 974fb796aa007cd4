"""Ignite/MONAI handlers of transfuse-monai."""

from transfuse_monai.handlers.checkpoint import ResumableCheckpoint
from transfuse_monai.handlers.gradient_clipping import GradientClipping
from transfuse_monai.handlers.metrics_report import SegmentationMetricsReport, format_table

__all__ = ["GradientClipping", "ResumableCheckpoint", "SegmentationMetricsReport", "format_table"]
