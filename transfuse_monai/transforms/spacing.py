# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Pixel spacing of 2D images: from the file when it has one (DICOM, NIfTI), else from the datalist.

Distances in mm (Hausdorff, average surface distance) need the true spacing; it is never guessed as 1 mm.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys

__all__ = ["RadiographSpacingd", "as_spacing"]


def as_spacing(value: Any, where: str) -> tuple[float, float]:
    """``(row, column)`` spacing from a number or a pair; raises a ValueError naming ``where`` otherwise."""
    try:
        values = [float(v) for v in (value if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)) else [value])]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{where}: 'spacing' must be a positive number or a [row, column] pair in mm, got {value!r}")
    return values[0], values[1]


class RadiographSpacingd(MapTransform):
    """Give every image of an item its pixel spacing: the one read from the reference image's file when it has one
    (DICOM, NIfTI), else the item's ``spacing_key`` entry (the datalist's ``spacing``, in mm, a number or a
    ``[row, column]`` pair). The spacing is written to ``meta["spacing"]`` and into the affine (so ``pixdim``,
    :class:`~monai.transforms.Resized` / :class:`~monai.transforms.Invertd` and the metrics agree), for the reference
    and every other key (labels stored as PNG get their image's spacing). ``spacing_key`` is removed from the item
    (so that items with and without it batch together).

    Args:
        keys: the images and labels of the item.
        reference_key: the key whose file spacing wins (the image).
        spacing_key: item key of the datalist's spacing.
        required: raise when no spacing is found (evaluation in mm); otherwise leave the item without spacing.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: (when called) ``required`` and no spacing, or an invalid ``spacing`` entry, naming the file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "image",
        spacing_key: str = "spacing",
        required: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.spacing_key = spacing_key
        self.required = bool(required)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        listed = d.pop(self.spacing_key, None)
        ref = d.get(self.reference_key)
        meta = getattr(ref, "meta", {}) or {}
        name = meta.get("filename_or_obj", self.reference_key)
        spacing: tuple[float, float] | None = None
        if "spacing" in meta:
            spacing = as_spacing(np.asarray(meta["spacing"]).tolist(), f"'{name}'")
        elif listed is not None:
            spacing = as_spacing(listed, f"datalist item of '{name}'")
        if spacing is None:
            if self.required:
                raise ValueError(
                    f"no pixel spacing for '{name}': the file has none (PNG / JPEG, or DICOM without PixelSpacing / "
                    f"ImagerPixelSpacing) and its datalist item has no 'spacing' (mm). Add \"spacing\": [row, column] "
                    f"to the item or to the datalist file; distances in mm are never computed with a guessed 1.0."
                )
            return d
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                img = MetaTensor(torch.as_tensor(img))
            affine = img.affine.clone().to(torch.float64)
            affine[0, 0], affine[1, 1] = spacing
            img.affine = affine
            img.meta["spacing"] = np.asarray(spacing, dtype=np.float64)
            img.meta[MetaKeys.ORIGINAL_AFFINE] = affine.numpy().copy()
            d[key] = img
        return d
