# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Input channel selection: which modalities of a multi-channel volume the network sees."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SelectModalitiesd"]


class SelectModalitiesd(MapTransform):
    """Keep the input channels ``modalities`` of channel-first volumes (after ``EnsureChannelFirstd``).

    A single-channel image (a 3D NIfTI) counts as channel 0, so ``modalities=[0]`` accepts 3D T2 volumes as well as
    4D T2 + ADC ones. The geometry is unchanged (nothing to invert).

    Args:
        keys: keys of the images.
        modalities: indices of the channels to keep, in order.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: empty or negative ``modalities``; when called, an image with too few channels (naming the file).
    """

    def __init__(self, keys: KeysCollection, modalities: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(modalities, (int, str)) or len(modalities) == 0 or any(int(m) < 0 for m in modalities):
            raise ValueError(f"modalities must be a non-empty list of channel indices, got {modalities!r}.")
        self.modalities = [int(m) for m in modalities]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] <= max(self.modalities):
                meta = getattr(img, "meta", None) or {}
                source = meta.get("filename_or_obj", "")
                what = "a 3D image (1 channel)" if img.shape[0] == 1 else f"{img.shape[0]} channels"
                raise ValueError(
                    f"'{key}'{f' ({source})' if source else ''} has {what}, but modalities {self.modalities} need "
                    f"{max(self.modalities) + 1}; pass modalities [0] for T2-only data."
                )
            if self.modalities != list(range(img.shape[0])):
                d[key] = img[self.modalities]
        return d
