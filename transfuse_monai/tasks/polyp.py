# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Polyp segmentation in colonoscopy frames, PraNet benchmark (the paper's first task).

Layout (Fan et al., PraNet, MICCAI 2020)::

    <root>/TrainDataset/{images,masks}/            Kvasir-SEG + CVC-ClinicDB training split (1,450 frames)
    <root>/TestDataset/<SetName>/{images,masks}/    the five test sets of :data:`PRANET_TEST_SETS`

Images are RGB JPEG/PNG frames, masks 0/255 single-channel PNGs with the image's stem. One class: polyp (mask
value 1 after loading), sigmoid output.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from transfuse_monai.data.datalists import build_image_mask_datalist, grouped_datalist
from transfuse_monai.data.synthetic import SizeSpec, draw_blob_sample, resolve_sizes, save_image_pair
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.utils import absolute_path

__all__ = ["PRANET_TEST_SETS", "PolypTask"]

#: The five PraNet polyp test sets, in the order used by the paper.
PRANET_TEST_SETS: tuple[str, ...] = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "CVC-300", "ETIS-LaribPolypDB")

_BACKGROUND = (170, 75, 70)  # reddish mucosa (RGB)
_POLYP = (240, 200, 120)  # pale yellow polyp


@register_task
class PolypTask(SegmentationTask):
    """PraNet polyp benchmark: ``datalist(root, "train")`` is ``TrainDataset``; ``datalist(root, "test")`` is every
    test set found, each item tagged with its set name under ``"set"`` (:meth:`test_datalists` gives them apart).
    There is no official validation split: the bundle holds out a seeded fraction of the training frames."""

    name = "polyp"
    title = "Polyp segmentation in colonoscopy frames (PraNet split)"
    class_names = ("background", "polyp")
    activation = "sigmoid"
    channel_names = ("R", "G", "B")
    distance_unit = "px"  # frames carry no pixel spacing
    splits = ("train", "test")
    demo_image_size = (96, 96)
    demo_sample = {"n_train": 12, "test_sets": {"Kvasir": 4, "CVC-ClinicDB": 4}, "size": (96, 96),
                   "test_sizes": [(90, 120), (96, 96)]}
    test_sets = PRANET_TEST_SETS

    def is_dataset(self, root: str | os.PathLike) -> bool:
        root = Path(root)
        return (root / "TrainDataset" / "images").is_dir() or (root / "TestDataset").is_dir()

    def datalist(self, root: str | os.PathLike, split: str = "train", validate: bool = True) -> list[dict]:
        self.check_split(split)
        if split == "train":
            return self.subset_datalist(root, "TrainDataset", validate=validate)
        return grouped_datalist(self.test_datalists(root, validate=validate))

    def subset_datalist(self, root: str | os.PathLike, subset: str, validate: bool = True) -> list[dict]:
        """The datalist of one sub-folder holding ``images`` and ``masks`` (``"TrainDataset"``,
        ``"TestDataset/Kvasir"``)."""
        folder = absolute_path(root) / subset
        return build_image_mask_datalist(
            folder / "images", folder / "masks", validate=validate, channels=self.in_channels,
            num_classes=self.num_classes,
        )

    def test_datalists(
        self, root: str | os.PathLike, sets: Sequence[str] | str | None = PRANET_TEST_SETS, validate: bool = True
    ) -> dict[str, list[dict]]:
        """One datalist per test set found under ``root/TestDataset``, in the order of ``sets``.

        Sets whose folder does not exist are skipped with one ``UserWarning`` each (naming the set and the path);
        sets that exist but are broken raise. ``sets=None`` takes every sub-folder of ``TestDataset``.

        Raises:
            FileNotFoundError: none of the requested sets exists.
        """
        test_root = absolute_path(root) / "TestDataset"
        if sets is None:
            if not test_root.is_dir():
                raise FileNotFoundError(f"PraNet TestDataset folder not found: '{test_root}'.")
            sets = sorted(p.name for p in test_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        elif isinstance(sets, str):
            sets = [sets]
        datalists: dict[str, list[dict]] = {}
        for name in sets:
            if not (test_root / name).is_dir():
                warnings.warn(
                    f"PraNet test set '{name}' not found at '{test_root / name}'; skipping it.", UserWarning,
                    stacklevel=2,
                )
                continue
            datalists[name] = self.subset_datalist(root, f"TestDataset/{name}", validate=validate)
        if not datalists:
            raise FileNotFoundError(f"None of the PraNet test sets {list(sets)} was found in '{test_root}'.")
        return datalists

    def make_sample(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 8,
        test_sets: Mapping[str, int] | None = None,
        size: tuple[int, int] = (64, 64),
        test_sizes: SizeSpec | Mapping[str, SizeSpec] = None,
    ) -> str:
        """Write a generated polyp dataset in the PraNet layout.

        Images alternate between PNG (even index) and JPEG (odd index) to exercise mixed extensions; masks are
        single-channel 0/255 PNGs with the same stem. Each frame holds one or two pale elliptical polyps on a
        textured reddish background.

        Args:
            root: output folder (created if needed).
            seed: seed of the generator; the output is fully deterministic.
            n_train: number of training pairs.
            test_sets: ``set name -> number of pairs``; ``None`` means ``{"Kvasir": 3, "CVC-ClinicDB": 3}`` and
                ``{}`` writes no test set.
            size: ``(height, width)`` of the training frames (and of the test frames when ``test_sizes`` is None).
            test_sizes: size(s) of the test frames: ``None`` (use ``size``), one ``(height, width)``, a list of them
                cycled over the frames of each set, or a mapping ``set name -> one of these``. Sizes other than
                ``size`` exercise resizing predictions back to the original resolution.

        Returns:
            ``str(root)``.
        """
        if test_sets is None:
            test_sets = {"Kvasir": 3, "CVC-ClinicDB": 3}
        root_path = Path(root)
        rng = np.random.default_rng(seed)

        def write_subset(subset: Path, sizes: list[tuple[int, int]]) -> None:
            for i, (h, w) in enumerate(sizes):
                img, mask = draw_blob_sample(rng, h, w, _BACKGROUND, _POLYP, int(rng.integers(1, 3)))
                ext = ".png" if i % 2 == 0 else ".jpg"
                save_image_pair(img, mask, subset / "images" / f"{i:04d}{ext}", subset / "masks" / f"{i:04d}.png")

        write_subset(root_path / "TrainDataset", resolve_sizes(size, size, n_train))
        for name, count in test_sets.items():
            spec = test_sizes.get(name) if isinstance(test_sizes, Mapping) else test_sizes
            write_subset(root_path / "TestDataset" / name, resolve_sizes(spec, size, count))
        return str(root_path)
