"""Inferers: wrappers that add fast execution paths to any MONAI inferer; slice-by-slice inference of volumes; exported
ONNX models run by ONNX Runtime, and OpenVINO IR models by OpenVINO, as networks."""

from transfuse_monai.inferers.autocast import AutocastInferer
from transfuse_monai.inferers.onnx import OnnxRuntimeNetwork
from transfuse_monai.inferers.openvino import OpenVINONetwork
from transfuse_monai.inferers.slices import VolumeSliceInferer, slice_inferer

__all__ = ["AutocastInferer", "OnnxRuntimeNetwork", "OpenVINONetwork", "VolumeSliceInferer", "slice_inferer"]
