"""Inferers: wrappers that add fast execution paths to any MONAI inferer; slice-by-slice inference of volumes."""

from transfuse_monai.inferers.autocast import AutocastInferer
from transfuse_monai.inferers.slices import VolumeSliceInferer, slice_inferer

__all__ = ["AutocastInferer", "VolumeSliceInferer", "slice_inferer"]
