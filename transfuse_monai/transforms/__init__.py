"""Transforms of transfuse-monai (dictionary versions end in ``d``, as in MONAI)."""

from transfuse_monai.transforms.intensity import BinaryMaskd, EnsureNumChannelsd, SelectHeadd

__all__ = ["BinaryMaskd", "EnsureNumChannelsd", "SelectHeadd"]
