# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Masks as loaded from disk -> class-index label maps, for binary and multi-class tasks alike."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ClassIndexd"]


def _source(img) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return f" in '{name}'" if name else ""


class ClassIndexd(MapTransform):
    """Turn a loaded, channel-first mask into a single-channel class-index map ``(1, *spatial)`` (float) with values
    ``0 .. num_classes - 1`` (0 = background), the label convention of every task.

    * Binary tasks (``num_classes=2``): 0/255 or 0/1 masks as stored by the polyp and ISIC datasets (anti-aliased
      edges included) are divided by 255 when their maximum exceeds 1 and thresholded at ``threshold``.
    * Multi-class tasks: the mask must hold the class indices themselves (or the stored values of ``values``, which
      are mapped to ``0 .. num_classes - 1`` in order); anything else is an error naming the file and the values.

    Masks saved as RGB(A) (identical channels) keep their first channel.

    Args:
        keys: keys of the masks.
        num_classes: number of classes, background included (``task.num_classes``).
        threshold: binary tasks only: threshold on the [0, 1] mask.
        values: multi-class only: the stored value of each class in class order, e.g. ``(0, 85, 170, 255)`` for
            masks saved with spread grey levels; ``None`` when the stored values are the class indices.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: invalid arguments, or (when called) a multi-class mask with values outside the classes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int = 2,
        threshold: float = 0.5,
        values: tuple[int, ...] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}.")
        if values is not None and len(values) != int(num_classes):
            raise ValueError(f"values must give one stored value per class ({num_classes}), got {list(values)}.")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.values = None if values is None else tuple(int(v) for v in values)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key][:1]
            if self.num_classes == 2 and self.values is None:
                mask = mask.float()
                if mask.numel() and float(mask.max()) > 1:
                    mask = mask / 255.0
                d[key] = (mask > self.threshold).float()
                continue
            d[key] = self._multi_class(mask, key)
        return d

    def _multi_class(self, mask: torch.Tensor, key: Hashable) -> torch.Tensor:
        found = torch.unique(torch.as_tensor(mask)).tolist()
        allowed = self.values if self.values is not None else tuple(range(self.num_classes))
        unexpected = [v for v in found if v not in allowed]
        if unexpected:
            shown = ", ".join(f"{v:g}" for v in unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
            raise ValueError(
                f"'{key}'{_source(mask)} holds value(s) {shown} that are not among the {self.num_classes} classes' "
                f"mask values {list(allowed)}."
            )
        out = mask.float()  # keeps a MetaTensor's metadata
        if self.values is not None:  # every value is known to be one of self.values (checked above)
            for index, value in enumerate(self.values):
                out[mask == value] = float(index)
        return out
