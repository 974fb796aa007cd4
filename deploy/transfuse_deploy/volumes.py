"""Array and geometry helpers of the Deploy applications, free of MONAI Deploy imports (the tests import them in
the main environment to build the bundle's reference input from the same pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["spacing_from_affine", "resample_to_grid", "monai_meta"]


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis of a ``(d+1, d+1)`` affine."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:-1, :-1] ** 2).sum(axis=0))


def resample_to_grid(
    array: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray, ref_shape: Sequence[int]
) -> np.ndarray:
    """Resample a 3D ``array`` (voxel-to-world ``affine``) onto the grid ``(ref_affine, ref_shape)`` with MONAI's
    :class:`~monai.transforms.SpatialResample` (bilinear, border padding): how the prostate application puts ADC on
    the T2 grid. Returns float32 of ``ref_shape``."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    img = MetaTensor(torch.as_tensor(np.asarray(array, dtype=np.float32))[None], affine=torch.as_tensor(affine))
    out = SpatialResample(mode="bilinear", padding_mode="border", align_corners=True, dtype=torch.float64)(
        img, dst_affine=torch.as_tensor(np.asarray(ref_affine, dtype=np.float64)), spatial_size=tuple(ref_shape)
    )
    return np.asarray(out[0].numpy(), dtype=np.float32)


def monai_meta(affine: np.ndarray, spatial_shape: Sequence[int], source: str, channel_last: bool) -> dict:
    """The metadata MONAI's ``LoadImage`` gives a (channel-last) array read from a file with this geometry."""
    affine = np.asarray(affine, dtype=np.float64)
    return {
        "affine": affine.copy(),
        "original_affine": affine.copy(),
        "spacing": spacing_from_affine(affine),
        "spatial_shape": np.asarray(spatial_shape),
        "original_channel_dim": -1 if channel_last else "no_channel",
        "space": "RAS",
        "filename_or_obj": source,
    }
