# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Volumes through a 2D network: neighbouring slices as channels (2.5D), for training and inference alike.

A 2D network such as TransFuse sees one slice of a volume at a time. With ``context = r`` it sees ``k = 2 r + 1``
neighbouring slices stacked as channels instead (2.5D). :class:`StackSliceNeighboursd` builds that input for *every*
slice of a channel-first volume ``(C, H, W, D)`` at once, giving ``(C * k, H, W, D)``; the same transform then serves
training and inference, so both give the network the same input:

* training: class-balanced 2D samples are one-slice crops picked by MONAI's
  :class:`~monai.transforms.RandCropByLabelClassesd` (``spatial_size=(-1, -1, 1)``: a whole slice, centred on a voxel
  of a class drawn with the given ``ratios``) made 2D by :class:`~monai.transforms.SqueezeDimd` (``dim=3``)::

      Compose([
          LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
          NormalizeIntensityd("image", nonzero=True, channel_wise=True),
          Resized(keys, spatial_size=(320, 320, -1), mode=("bilinear", "nearest")),
          StackSliceNeighboursd("image", context=1),                 # (C, H, W, D) -> (3 C, H, W, D)
          RandCropByLabelClassesd(keys, "label", spatial_size=(-1, -1, 1), ratios=[1, 1, 1], num_classes=3,
                                  num_samples=8),                   # (3 C, H, W, 1), label (1, H, W, 1)
          SqueezeDimd(keys, dim=3),                                  # (3 C, H, W), label (1, H, W)
      ])

* inference: the same pre-processing up to :class:`StackSliceNeighboursd`, then
  :func:`transfuse_monai.inferers.slice_inferer` (MONAI's ``SliceInferer``) runs the network slice by slice.

Stacking the whole volume before cropping (rather than cropping ``k`` slices and stacking the crop) keeps the picked
slice at the centre of its stack at the volume's first and last slices too (a ``k``-slice crop would be shifted
inwards there by the cropper), and lets a ``CacheDataset`` cache the stacked volume before the random crop.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import MapTransform, RandCropByLabelClassesd, SqueezeDim, Transform
from monai.utils import convert_to_tensor

__all__ = [
    "SLICE_PAD_MODES", "stack_slice_neighbours", "StackSliceNeighbours", "StackSliceNeighboursd", "RandClassSlicesd",
]

#: How slices beyond the first and last are filled: ``"edge"`` repeats the border slice, ``"constant"`` uses zeros.
SLICE_PAD_MODES = ("edge", "constant")


def _check_arguments(context: int, slice_dim: int, mode: str) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative integer (neighbours on each side), got {context!r}.")
    if isinstance(slice_dim, bool) or slice_dim not in (0, 1, 2):
        raise ValueError(f"slice_dim must be a spatial axis of a (C, H, W, D) volume: 0, 1 or 2, got {slice_dim!r}.")
    if mode not in SLICE_PAD_MODES:
        raise ValueError(f"mode must be one of {SLICE_PAD_MODES}, got {mode!r}.")


def stack_slice_neighbours(
    img: torch.Tensor, context: int, slice_dim: int = 2, mode: str = "edge"
) -> torch.Tensor:
    """Stack each slice of a channel-first volume with its ``context`` neighbours on either side as channels.

    Channel order (channel-major): output channel ``c * k + j`` (``k = 2 * context + 1``, ``j = 0 .. k - 1``) at
    slice ``z`` is input channel ``c`` at slice ``z + j - context``. For two input channels (T2, ADC) and
    ``context=1``: ``[T2(z-1), T2(z), T2(z+1), ADC(z-1), ADC(z), ADC(z+1)]``; channel ``c * k + context`` is the
    slice itself.

    Args:
        img: ``(C, H, W, D)`` volume (a ``MetaTensor`` keeps its metadata: the geometry is unchanged).
        context: number of neighbours on each side (0 returns ``img`` itself).
        slice_dim: spatial axis of the slices (0, 1 or 2; 2 is the last, the axial axis of RAS volumes).
        mode: how slices beyond the volume are filled, one of :data:`SLICE_PAD_MODES`.

    Returns:
        ``(C * (2 * context + 1), H, W, D)``, same type, dtype and device as ``img``.

    Raises:
        ValueError: ``img`` is not a channel-first 3D volume, or ``context``, ``slice_dim`` or ``mode`` is invalid.
    """
    _check_arguments(context, slice_dim, mode)
    if img.dim() != 4:
        raise ValueError(
            f"expected a channel-first volume (C, H, W, D), got shape {tuple(img.shape)}; add the channel axis first "
            "(EnsureChannelFirstd) and stack before slicing the volume into 2D samples."
        )
    if context == 0:
        return img
    axis = slice_dim + 1
    depth = img.shape[axis]
    k = 2 * context + 1
    offsets = torch.arange(-context, context + 1, device=img.device)
    index = torch.arange(depth, device=img.device)[None, :] + offsets[:, None]  # (k, D): slice seen at (j, z)
    inside = (index >= 0) & (index < depth)
    out = img.index_select(axis, index.clamp(0, depth - 1).flatten())  # slice axis now k * D long, j-major
    out = out.movedim(axis, -1)
    shape = out.shape
    out = out.reshape(*shape[:-1], k, depth)  # (C, a, b, k, D)
    if mode == "constant":
        out = out * inside.to(out.dtype)
    out = out.movedim(-2, 1).reshape(shape[0] * k, shape[1], shape[2], depth)  # (C * k, a, b, D), channel-major
    return out.movedim(-1, axis).contiguous()


class StackSliceNeighbours(Transform):
    """Neighbouring slices as channels (2.5D input of a 2D network), see :func:`stack_slice_neighbours`.

    The geometry (spatial shape, affine) is unchanged, so the transform records nothing for inversion and
    :class:`~monai.transforms.Invertd` passes over it, like an intensity transform.

    Args:
        context: number of neighbouring slices on each side; the network then has ``C * (2 * context + 1)`` input
            channels.
        slice_dim: spatial axis of the slices (0, 1 or 2), the ``spatial_dim`` of the ``SliceInferer``.
        mode: how slices beyond the volume are filled: ``"edge"`` (repeat the border slice) or ``"constant"`` (0).
    """

    def __init__(self, context: int = 1, slice_dim: int = 2, mode: str = "edge") -> None:
        _check_arguments(context, slice_dim, mode)
        self.context = int(context)
        self.slice_dim = int(slice_dim)
        self.mode = mode

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """
        Args:
            img: channel-first volume ``(C, H, W, D)``, a tensor or an array.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        return stack_slice_neighbours(img, self.context, self.slice_dim, self.mode)


class StackSliceNeighboursd(MapTransform):
    """Dictionary version of :class:`StackSliceNeighbours`: apply it to the images, never to the labels.

    Args:
        keys: keys of the channel-first volumes to stack.
        context: number of neighbouring slices on each side.
        slice_dim: spatial axis of the slices (0, 1 or 2).
        mode: how slices beyond the volume are filled: ``"edge"`` or ``"constant"``.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        context: int = 1,
        slice_dim: int = 2,
        mode: str = "edge",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = StackSliceNeighbours(context, slice_dim, mode)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


class RandClassSlicesd(RandCropByLabelClassesd):
    """Class-balanced 2D slices of a channel-first volume: MONAI's :class:`~monai.transforms.RandCropByLabelClassesd`
    with a one-slice window (``spatial_size=(-1, -1, 1)`` for ``slice_dim=2``) and the slice axis squeezed.

    Each of the ``num_samples`` slices is the slice of a voxel drawn from a class chosen with probability
    proportional to ``ratios`` (so slices holding PZ and TZ are seen despite the many background slices); the result
    is a list of 2D samples ``(C, H, W)``, label ``(1, H, W)``, that 2D augmentations can follow.

    Args:
        keys: keys of the image and the label.
        label_key: key of the class-index label ``(1, H, W, D)``.
        num_classes: number of classes, background included.
        ratios: relative frequency of each class (default: equal).
        num_samples: slices drawn per volume.
        slice_dim: spatial axis of the slices (2: axial for RAS volumes).
        warn: warn when a class is absent from a volume.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: ``slice_dim`` not 0, 1 or 2.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        num_classes: int,
        ratios: Sequence[float] | None = None,
        num_samples: int = 1,
        slice_dim: int = 2,
        warn: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        if isinstance(slice_dim, bool) or slice_dim not in (0, 1, 2):
            raise ValueError(f"slice_dim must be a spatial axis of a (C, H, W, D) volume: 0, 1 or 2, got {slice_dim}.")
        window = [-1, -1, -1]
        window[slice_dim] = 1
        super().__init__(
            keys, label_key, spatial_size=window, ratios=None if ratios is None else list(ratios),
            num_classes=int(num_classes), num_samples=int(num_samples), warn=warn,
            allow_missing_keys=allow_missing_keys,
        )
        self.slice_dim = int(slice_dim)
        self.squeeze = SqueezeDim(dim=self.slice_dim + 1)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> list[dict[Hashable, Any]]:
        samples = super().__call__(data, lazy=False)
        for sample in samples:
            for key in self.key_iterator(sample):
                sample[key] = self.squeeze(sample[key])
        return samples
