# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Skin-lesion segmentation, ISIC 2017 Part 1 (the paper's second task).

Two layouts are accepted, the official one taking precedence for each split:

* official: ``ISIC-2017_Training_Data/ISIC_xxxxxxx.jpg`` with
  ``ISIC-2017_Training_Part1_GroundTruth/ISIC_xxxxxxx_segmentation.png`` (``Validation`` and ``Test_v2`` analogues,
  :data:`ISIC2017_SPLITS`); the ``*_superpixels.png`` files and the metadata CSV of the data folders are ignored.
* plain: ``<root>/<split>/{images,masks}``, masks named like the image (``ISIC_xxxxxxx.png``) or with the official
  ``_segmentation`` suffix (detected when every mask carries it).

Images are RGB dermoscopy JPEGs, masks 0/255 PNGs. One class: lesion (mask value 1 after loading), sigmoid output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from transfuse_monai.data.datalists import build_image_mask_datalist, scan_images
from transfuse_monai.data.synthetic import draw_blob_sample, resolve_sizes, save_image_pair
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.utils import absolute_path

__all__ = ["ISIC2017_SPLITS", "ISIC2017Task"]

#: Official ISIC 2017 folder names per split: ``split -> (images_dir, masks_dir)``.
ISIC2017_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}

_MASK_SUFFIX = "_segmentation"
#: Stem suffixes of files in the official data folders that are not images to segment.
EXCLUDE_SUFFIXES: tuple[str, ...] = ("_superpixels",)

_SKIN = (225, 185, 160)  # light skin (RGB)
_LESION = (105, 65, 45)  # dark brown lesion


@register_task
class ISIC2017Task(SegmentationTask):
    """ISIC 2017 lesion segmentation with its official train / val / test split."""

    name = "isic2017"
    title = "Skin-lesion segmentation, ISIC 2017 Part 1"
    class_names = ("background", "lesion")
    activation = "sigmoid"
    channel_names = ("R", "G", "B")
    distance_unit = "px"  # frames carry no pixel spacing
    splits = tuple(ISIC2017_SPLITS)
    demo_image_size = (96, 128)
    demo_sample = {"n_train": 12, "n_val": 4, "n_test": 4, "size": (96, 128)}
    exclude_suffixes = EXCLUDE_SUFFIXES

    def is_dataset(self, root: str | os.PathLike) -> bool:
        root = Path(root)
        return any((root / d).is_dir() for d in (*(names[0] for names in ISIC2017_SPLITS.values()), *self.splits))

    def datalist(self, root: str | os.PathLike, split: str = "train", validate: bool = True) -> list[dict]:
        """The datalist of ``split`` (``"train"``, ``"val"`` or ``"test"``).

        Raises:
            ValueError: an unknown split, an empty split or any problem found (all listed in one error).
            FileNotFoundError: neither layout is found for ``split``.
        """
        self.check_split(split)
        root = absolute_path(root)
        data_name, gt_name = ISIC2017_SPLITS[split]
        if (root / data_name).is_dir():
            return build_image_mask_datalist(
                root / data_name, root / gt_name, mask_suffix=_MASK_SUFFIX, exclude_suffixes=EXCLUDE_SUFFIXES,
                validate=validate, channels=self.in_channels, num_classes=self.num_classes,
            )
        plain = root / split
        if not plain.is_dir():
            raise FileNotFoundError(
                f"ISIC 2017 split '{split}' not found in '{root}': expected either the official folders "
                f"'{data_name}' + '{gt_name}' or a plain '{split}/images' + '{split}/masks' layout."
            )
        masks_dir = plain / "masks"
        mask_suffix = ""
        if masks_dir.is_dir():
            unique, duplicates = scan_images(masks_dir)
            stems = [*unique, *duplicates]
            if stems and all(s.endswith(_MASK_SUFFIX) for s in stems):
                mask_suffix = _MASK_SUFFIX
        return build_image_mask_datalist(
            plain / "images", masks_dir, mask_suffix=mask_suffix, exclude_suffixes=EXCLUDE_SUFFIXES,
            validate=validate, channels=self.in_channels, num_classes=self.num_classes,
        )

    def make_sample(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 8,
        n_val: int = 2,
        n_test: int = 2,
        size: tuple[int, int] = (64, 64),
        official_layout: bool = True,
    ) -> str:
        """Write a generated skin-lesion dataset in an ISIC 2017 layout.

        Image ids are unique across splits (``ISIC_0000000`` ...). With ``official_layout`` the official folder
        names are used, masks are named ``ISIC_xxxxxxx_segmentation.png`` and, like the real archives, the data
        folders also hold ``ISIC_xxxxxxx_superpixels.png`` files and a metadata CSV (both must be ignored);
        otherwise the plain ``root/<split>/{images,masks}`` layout with masks named like their image.

        Args:
            root: output folder (created if needed).
            seed: seed of the generator; the output is fully deterministic.
            n_train: number of training pairs.
            n_val: number of validation pairs.
            n_test: number of test pairs.
            size: ``(height, width)`` of every image.
            official_layout: write the official layout instead of the plain one.

        Returns:
            ``str(root)``.
        """
        root_path = Path(root)
        rng = np.random.default_rng(seed)
        next_id = 0
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            data_name, gt_name = ISIC2017_SPLITS[split]
            if official_layout:
                images_dir, masks_dir = root_path / data_name, root_path / gt_name
            else:
                images_dir, masks_dir = root_path / split / "images", root_path / split / "masks"
            images_dir.mkdir(parents=True, exist_ok=True)
            masks_dir.mkdir(parents=True, exist_ok=True)
            ids = []
            for h, w in resolve_sizes(size, size, count):
                stem = f"ISIC_{next_id:07d}"
                next_id += 1
                ids.append(stem)
                img, mask = draw_blob_sample(rng, h, w, _SKIN, _LESION, 1)
                mask_name = f"{stem}{_MASK_SUFFIX}.png" if official_layout else f"{stem}.png"
                save_image_pair(img, mask, images_dir / f"{stem}.jpg", masks_dir / mask_name)
                if official_layout:
                    superpixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
                    Image.fromarray(superpixels).save(images_dir / f"{stem}_superpixels.png")
            if official_layout:
                lines = ["image_id,age_approximate,sex"] + [f"{s},55,unknown" for s in ids]
                (images_dir / f"{data_name}_metadata.csv").write_text("\n".join(lines) + "\n")
        return str(root_path)
