# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Spatial transforms that know about anatomy: a mirror that keeps the patient's left and right labels right."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, RandomizableTransform

__all__ = ["RandHorizontalFlipSwapd"]


class RandHorizontalFlipSwapd(RandomizableTransform, MapTransform):
    """Mirror the image left-right and swap the labels of paired sides, so a mirrored patient's left femur (now on
    the image's left) is labelled "right femur" as anatomy requires (or keep the flip off with ``prob=0``).

    Args:
        keys: images and labels to flip (channel-first ``(C, H, W)``).
        label_keys: the keys among ``keys`` whose values are swapped (class-index maps).
        swap: pairs of mask values exchanged by the flip; default the femurs ``((2, 3),)``.
        prob: probability of flipping an item.
        spatial_axis: the horizontal axis of the spatial dims (1: the columns of ``(H, W)``).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: a value in two pairs.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = "label",
        swap: Sequence[Sequence[int]] = ((2, 3),),
        prob: float = 0.5,
        spatial_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.swap = [(int(a), int(b)) for a, b in swap]
        flat = [v for pair in self.swap for v in pair]
        if len(flat) != len(set(flat)):
            raise ValueError(f"swap pairs must not share values, got {self.swap}.")
        self.flipper = Flip(spatial_axis=spatial_axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            out = self.flipper(d[key])
            if key in self.label_keys:
                swapped = out.clone()
                for a, b in self.swap:
                    swapped[out == a] = b
                    swapped[out == b] = a
                out = swapped
            d[key] = out
        return d
