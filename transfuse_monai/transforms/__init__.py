"""Transforms of transfuse-monai (dictionary versions end in ``d``, as in MONAI)."""

from transfuse_monai.transforms.channels import SelectModalitiesd
from transfuse_monai.transforms.intensity import EnsureNumChannelsd, SelectHeadd
from transfuse_monai.transforms.labels import ClassIndexd
from transfuse_monai.transforms.spacing import RadiographSpacingd, as_spacing
from transfuse_monai.transforms.spatial import RandHorizontalFlipSwapd
from transfuse_monai.transforms.slices import (
    SLICE_PAD_MODES,
    RandClassSlicesd,
    StackSliceNeighbours,
    StackSliceNeighboursd,
    stack_slice_neighbours,
)

__all__ = [
    "ClassIndexd",
    "RadiographSpacingd",
    "RandHorizontalFlipSwapd",
    "SelectModalitiesd",
    "as_spacing",
    "EnsureNumChannelsd",
    "SelectHeadd",
    "SLICE_PAD_MODES",
    "RandClassSlicesd",
    "StackSliceNeighbours",
    "StackSliceNeighboursd",
    "stack_slice_neighbours",
]
