# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Hip radiographs: pelvis, left femur and right femur (the paper's third task, Table 3), distances in millimetres.

Classes (mask values): 0 background, 1 pelvis, 2 left femur, 3 right femur. "Left" and "right" are the **patient's**
sides: on a standard antero-posterior (AP) radiograph, displayed as usual, the patient's left femur appears on the
**right** half of the image. Every transform keeps this: the only horizontal flip of the bundle,
:class:`~transfuse_monai.transforms.RandHorizontalFlipSwapd`, swaps the two femur labels as it mirrors the image.

Data: a JSON datalist in MONAI's decathlon convention (read by :func:`monai.data.load_decathlon_datalist`), by default
``<dataset_dir>/datalist.json``::

    {"spacing": [0.143, 0.143],                       # optional default for every item, in mm (row, column)
     "training":   [{"image": "img/0001.dcm", "label": "lbl/0001.png"}, ...],
     "validation": [{"image": "img/0002.png", "label": "lbl/0002.png", "spacing": 0.143}, ...],
     "test":       [...]}

Paths are relative to the dataset folder. Images are DICOM (DX / CR), PNG / JPEG / BMP / TIFF (grey or 3-channel) or
NIfTI; labels are PNG or NIfTI index maps with values 0..3, the size of their image. Arrays are ``(rows, columns)``
= ``(H, W)``; NIfTI arrays are used as stored (axis 0 = rows, as MONAI's NIfTI writer stores a 2D image).

Pixel spacing (mm, ``(row, column)``), first found wins:

1. the image: DICOM ``PixelSpacing`` (calibrated in the patient plane, when present) else ``ImagerPixelSpacing``
   (the detector plane, which DX / CR images must have); the NIfTI header;
2. the item's ``spacing`` in the datalist, then the file-level ``spacing`` of the datalist;
3. none: :meth:`HipTask.datalist` raises an error naming the files (the distance metrics are in mm and never
   assume 1 mm per pixel).

The files are read by :class:`~transfuse_monai.data.readers.RadiographReader` (DICOM modality and VOI LUTs,
MONOCHROME1 inverted), the spacing given by :class:`~transfuse_monai.transforms.RadiographSpacingd`, the flip is
:class:`~transfuse_monai.transforms.RandHorizontalFlipSwapd`; the split command is ``python -m transfuse_monai.data
split`` (the paper's random 7:1:2 split, with ``--spacing`` for a default spacing).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transfuse_monai.data.checks import raise_problems
from transfuse_monai.data.datalists import decathlon_items, read_json_datalist
from transfuse_monai.data.readers import RADIOGRAPH_EXTENSIONS, probe_radiograph, read_radiograph
from transfuse_monai.data.synthetic import draw_hip, resolve_sizes, write_dicom, write_nifti_2d
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.transforms.spacing import as_spacing
from transfuse_monai.utils import absolute_path, atomic_write_json

__all__ = ["HIP_CLASSES", "HIP_DATALIST_KEYS", "SAMPLE_FORMATS", "HipTask"]

#: Class names by mask value; left / right are the patient's sides.
HIP_CLASSES: tuple[str, ...] = ("background", "pelvis", "left femur", "right femur")
#: Split name -> list key of the datalist JSON (MONAI's decathlon convention).
HIP_DATALIST_KEYS: dict[str, str] = {"train": "training", "val": "validation", "test": "test"}
#: Image formats of the generated sample, cycled over the items.
SAMPLE_FORMATS: tuple[str, ...] = ("dicom", "dicom_mono1", "png", "png_rgb", "nifti")


@register_task
class HipTask(SegmentationTask):
    """Pelvis, left and right femur on hip radiographs (softmax over 4 classes, distances in mm).

    Args:
        datalist_file: the datalist JSON; ``None`` uses ``<root>/datalist.json``. A relative path is relative to
            the dataset folder.
    """

    name = "hip"
    title = "Hip X-ray: pelvis, left and right femur (patient's sides)"
    class_names = HIP_CLASSES
    activation = "softmax"
    channel_names = ("X-ray",)
    spatial_dims = 2
    distance_unit = "mm"
    splits = tuple(HIP_DATALIST_KEYS)
    demo_image_size = (64, 64)
    demo_epochs = 2
    demo_sample = {"n_train": 10, "n_val": 3, "n_test": 3, "size": (80, 96)}
    #: The paper's Table 3 (TransFuse-S, 7:1:2 split of 641 private radiographs): mean HD and ASD in mm.
    paper_reference = {"hd": 9.81, "asd": 1.09}

    def __init__(self, datalist_file: str | os.PathLike | None = None) -> None:
        self.datalist_file = None if datalist_file in (None, "") else os.fspath(datalist_file)

    def datalist_path(self, root: str | os.PathLike) -> Path:
        """The datalist JSON used for dataset folder ``root``."""
        root = absolute_path(root)
        if self.datalist_file is None:
            return root / "datalist.json"
        path = Path(os.path.expanduser(self.datalist_file))
        return path if path.is_absolute() else root / path

    def is_dataset(self, root: str | os.PathLike) -> bool:
        return self.datalist_path(root).is_file()

    def datalist(
        self, root: str | os.PathLike, split: str = "train", validate: bool = True, require_spacing: bool = True
    ) -> list[dict]:
        """The items ``{"image", "label", "name"[, "spacing"]}`` of ``split`` (absolute paths) from the datalist JSON.

        With ``validate`` every file is opened before anything runs: existing and readable (DICOM decoded), image
        and label of the same size, label values in 0..3, and (with ``require_spacing``) a pixel spacing from the
        image or the datalist. All problems are raised together, each naming its file.

        Raises:
            ValueError: an unknown split, an empty split, a malformed datalist or the problems found.
            FileNotFoundError: no datalist JSON.
        """
        self.check_split(split)
        path = self.datalist_path(root)
        content = read_json_datalist(path)
        key = HIP_DATALIST_KEYS[split]
        entries = content.get(key)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"hip datalist '{path}': the '{key}' list (split '{split}') is missing or empty.")
        malformed = [
            f"'{key}' entry #{index} needs 'image' and 'label' paths, got {entry!r}"
            for index, entry in enumerate(entries)
            if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry
        ]
        if malformed:
            raise_problems(malformed, f"hip datalist '{path}', split '{split}'")
        items = decathlon_items(path, key, base_dir=os.path.expanduser(os.fspath(root)))
        problems = self._attach_spacing(items, content.get("spacing"), f"'{key}' entry")
        if validate:
            problems += self._check(items, require_spacing)
        if problems:
            raise_problems(problems, f"hip datalist '{path}', split '{split}'")
        return items

    def inference_datalist(self, source: str | os.PathLike, split: str = "test") -> list[dict]:
        """Inference items ``[{"image": path[, "spacing": [row, col]]}, ...]`` from a folder of radiographs, one
        radiograph, or a hip datalist JSON (its ``split`` list: the images, with their datalist spacing; relative
        paths are relative to the file's folder).

        Raises:
            FileNotFoundError: ``source`` does not exist.
            ValueError: no radiograph found, or the JSON has no ``split`` list.
        """
        path = absolute_path(source)
        if path.is_dir():
            items = [
                {"image": str(p)} for p in sorted(path.iterdir())
                if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(RADIOGRAPH_EXTENSIONS)
            ]
        elif path.is_file() and path.name.lower().endswith(RADIOGRAPH_EXTENSIONS):  # one radiograph
            items = [{"image": str(path)}]
        elif path.is_file():
            key = HIP_DATALIST_KEYS.get(split, split)
            listed = decathlon_items(path, key)
            problems = self._attach_spacing(listed, read_json_datalist(path).get("spacing"), f"'{path}' item")
            if problems:
                raise ValueError("\n".join(problems))
            items = [{k: d[k] for k in ("image", "spacing") if k in d} for d in listed]
        else:
            raise FileNotFoundError(
                f"inference input not found: '{path}' (a folder of radiographs, a radiograph or a datalist JSON)"
            )
        if not items:
            raise ValueError(f"no radiograph ({', '.join(RADIOGRAPH_EXTENSIONS)}) found in '{path}'.")
        return items

    @staticmethod
    def _attach_spacing(items: list[dict], default: Any, where: str) -> list[str]:
        """Give each item its ``spacing`` (its own, else the datalist's file-level one) as a ``[row, column]``
        list; returns the problems of invalid values."""
        problems = []
        for index, item in enumerate(items):
            spacing = item.get("spacing", default)
            if spacing is None:
                continue
            try:
                item["spacing"] = list(as_spacing(spacing, f"{where} #{index} ('{item['image']}')"))
            except ValueError as err:
                problems.append(str(err))
        return problems

    def load_transforms(self, keys: Sequence[str] = ("image", "label")) -> list:
        """Radiographs and label maps in any format of :data:`~transfuse_monai.data.RADIOGRAPH_EXTENSIONS` read by
        :class:`~transfuse_monai.data.RadiographReader`, with their pixel spacing (from the file, else the item's
        ``spacing``; required) in the metadata and affine."""
        from monai.transforms import EnsureChannelFirstd, LoadImaged

        from transfuse_monai.data.readers import RadiographReader
        from transfuse_monai.transforms import ClassIndexd, RadiographSpacingd

        image, label = keys
        return [
            LoadImaged(keys=image, reader=RadiographReader(), image_only=True),
            LoadImaged(keys=label, reader=RadiographReader(label=True), image_only=True),
            EnsureChannelFirstd(keys=[image, label]),
            RadiographSpacingd(keys=[image, label], reference_key=image, required=True),
            ClassIndexd(keys=label, num_classes=self.num_classes),
        ]

    def input_problems(self, path: str | os.PathLike) -> list[str]:
        """Why the inference input ``path`` cannot be segmented (empty when it can): a file this task does not
        read, or one that does not decode to a 2D radiograph (:func:`probe_radiograph`)."""
        try:
            probe_radiograph(path)
        except (FileNotFoundError, ValueError) as err:
            return [str(err)]
        return []

    def _check(self, items: Sequence[Mapping], require_spacing: bool) -> list[str]:
        problems: list[str] = []
        empty: list[str] = []
        allowed = set(range(self.num_classes))
        for item in items:
            image, label = item["image"], item["label"]
            try:
                shape, spacing, _ = probe_radiograph(image)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"image: {err}")
                shape, spacing = None, None
            if shape is not None and spacing is None and "spacing" not in item and require_spacing:
                problems.append(
                    f"no pixel spacing for '{image}': the file has none and its datalist item has no 'spacing' "
                    f"(add \"spacing\": [row, column] in mm to the item or to the datalist file)"
                )
            try:
                values, _ = read_radiograph(label, label=True)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"label: {err}")
                continue
            found = sorted(np.unique(values).tolist())
            if found == [0]:
                empty.append(str(label))
            bad = [v for v in found if v not in allowed]
            if bad:
                problems.append(
                    f"label '{label}' holds value(s) {bad[:8]} outside the classes 0..{self.num_classes - 1} "
                    f"({', '.join(f'{i} {n}' for i, n in enumerate(self.class_names))})"
                )
            if shape is not None and tuple(values.shape) != tuple(shape):
                problems.append(
                    f"size mismatch: image '{image}' is {shape[0]}x{shape[1]} (HxW) but label '{label}' is "
                    f"{values.shape[0]}x{values.shape[1]}"
                )
        if empty:
            warnings.warn(
                f"{len(empty)} label(s) hold background only (check them if unexpected): {', '.join(empty)}",
                UserWarning,
                stacklevel=3,
            )
        return problems

    def make_sample(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 10,
        n_val: int = 3,
        n_test: int = 3,
        size: tuple[int, int] | Sequence[tuple[int, int]] = (80, 96),
        formats: Sequence[str] = SAMPLE_FORMATS,
        spacing: tuple[float, float] = (0.143, 0.143),
    ) -> str:
        """Write a generated hip dataset with its ``datalist.json`` to ``root``.

        Formats cycle over the items (``formats``): ``"dicom"`` (DX, MONOCHROME2, 12 bits, rescale slope 2 /
        intercept -1000, ImagerPixelSpacing), ``"dicom_mono1"`` (MONOCHROME1, 16 bits), ``"png"`` (grey, spacing in
        the datalist item), ``"png_rgb"`` (3-channel grey picture, spacing from the datalist's file-level
        ``spacing``) and ``"nifti"`` (image and label, spacing in the header). Labels are PNG except for NIfTI.

        Args:
            root: output folder (created).
            seed: seed of the generator; the output is deterministic.
            n_train: training items.
            n_val: validation items.
            n_test: test items.
            size: ``(H, W)`` of every image, or one size per item.
            formats: the image formats to cycle through (see above).
            spacing: pixel spacing in mm of every image.

        Returns:
            ``str(root)``.

        Raises:
            ValueError: an unknown format.
        """
        unknown = [f for f in formats if f not in SAMPLE_FORMATS]
        if unknown or not formats:
            raise ValueError(f"formats must be among {list(SAMPLE_FORMATS)}, got {list(formats)}.")
        root_path = Path(root)
        (root_path / "images").mkdir(parents=True, exist_ok=True)
        (root_path / "labels").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        total = n_train + n_val + n_test
        sizes = resolve_sizes(size, (80, 96), total)
        entries = []
        for i, (h, w) in enumerate(sizes):
            fmt = formats[i % len(formats)]
            image, label = draw_hip(rng, h, w)
            stem = f"hip_{i:03d}"
            entry: dict[str, Any] = {}
            if fmt.startswith("dicom"):
                mono1 = fmt == "dicom_mono1"
                img_path = root_path / "images" / f"{stem}.dcm"
                write_dicom(
                    img_path, image, spacing, monochrome1=mono1, bits_stored=16 if mono1 else 12,
                    slope=1.0 if mono1 else 2.0, intercept=0.0 if mono1 else -1000.0,
                )
            elif fmt == "nifti":
                img_path = root_path / "images" / f"{stem}.nii.gz"
                write_nifti_2d(img_path, (image * 1000).astype(np.int16), spacing)
            else:
                img_path = root_path / "images" / f"{stem}.png"
                grey = np.round(image * 255).astype(np.uint8)
                Image.fromarray(np.stack([grey] * 3, -1) if fmt == "png_rgb" else grey).save(img_path)
                if fmt == "png":
                    entry["spacing"] = list(spacing)
            if fmt == "nifti":
                lbl_path = root_path / "labels" / f"{stem}.nii.gz"
                write_nifti_2d(lbl_path, label, spacing)
            else:
                lbl_path = root_path / "labels" / f"{stem}.png"
                Image.fromarray(label).save(lbl_path)
            entries.append({"image": f"images/{img_path.name}", "label": f"labels/{lbl_path.name}", **entry})
        content = {
            "description": "generated hip radiographs (synthetic pelvis and femurs)",
            "spacing": list(spacing),
            "training": entries[:n_train],
            "validation": entries[n_train : n_train + n_val],
            "test": entries[n_train + n_val :],
        }
        atomic_write_json(root_path / "datalist.json", content)
        return str(root_path)
