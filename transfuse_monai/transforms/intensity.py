# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Small dictionary transforms for input channels and deep-supervision outputs."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["EnsureNumChannelsd", "SelectHeadd"]


class EnsureNumChannelsd(MapTransform):
    """Make channel-first images have exactly ``num_channels`` channels.

    Extra channels are dropped (an alpha channel of an RGBA PNG, the copies in an RGB-saved mask), and a single
    channel is repeated (a greyscale frame fed to an RGB network). Other mismatches raise a ``ValueError``.

    Args:
        keys: keys of the channel-first images.
        num_channels: the wanted number of channels.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, num_channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}.")
        self.num_channels = int(num_channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if c == self.num_channels:
                continue
            if c > self.num_channels:
                d[key] = img[: self.num_channels]
            elif c == 1:
                d[key] = img.repeat(self.num_channels, *([1] * (img.ndim - 1)))
            else:
                raise ValueError(f"'{key}' has {c} channels; cannot make {self.num_channels} from them.")
        return d


class SelectHeadd(MapTransform):
    """Keep the final head of a stacked deep-supervision prediction (``(N, C, *spatial)`` -> ``(C, *spatial)``).

    Items that are not stacked (``C, *spatial``, e.g. eval-mode outputs) pass through unchanged.

    Args:
        keys: keys of the predictions.
        spatial_dims: number of spatial dimensions.
        index: which head to keep (0: TransFuse's final fused map).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self, keys: KeysCollection, spatial_dims: int = 2, index: int = 0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = int(spatial_dims)
        self.index = int(index)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim == self.spatial_dims + 2:
                d[key] = d[key][self.index]
        return d
