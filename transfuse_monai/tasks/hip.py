# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Hip radiographs: pelvis, left femur and right femur (the paper's third task, Table 3), distances in millimetres.

Classes (mask values): 0 background, 1 pelvis, 2 left femur, 3 right femur. "Left" and "right" are the **patient's**
sides: on a standard antero-posterior (AP) radiograph, displayed as usual, the patient's left femur appears on the
**right** half of the image. Every transform keeps this: the only horizontal flip of the bundle,
:class:`RandHorizontalFlipSwapd`, swaps the two femur labels as it mirrors the image.

Data: a JSON datalist in MONAI's decathlon convention (:func:`monai.data.load_decathlon_datalist`), by default
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

DICOM pixel data goes through the modality LUT (``RescaleSlope`` / ``RescaleIntercept``), optionally the VOI LUT
(``WindowCenter`` / ``WindowWidth``), and MONOCHROME1 images are inverted so that bone is bright in every input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from monai.config import KeysCollection
from monai.data import ImageReader, partition_dataset
from monai.data.meta_tensor import MetaTensor
from monai.transforms import Flip, MapTransform, RandomizableTransform
from monai.utils import MetaKeys

from transfuse_monai.data.formats import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, NIFTI_EXTENSIONS, file_stem
from transfuse_monai.data.synthetic import resolve_sizes
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.utils import atomic_path, atomic_write_json

__all__ = [
    "HIP_CLASSES",
    "HIP_DATALIST_KEYS",
    "RADIOGRAPH_EXTENSIONS",
    "HipTask",
    "RadiographReader",
    "RadiographSpacingd",
    "RandHorizontalFlipSwapd",
    "read_radiograph",
    "probe_radiograph",
    "radiograph_datalist",
    "make_split_datalist",
    "draw_hip",
    "write_dicom",
    "SAMPLE_FORMATS",
    "main",
]

logger = logging.getLogger(__name__)

if __name__ == "__main__":  # ``python -m transfuse_monai.tasks.hip``: the package import above already registered
    # this module's task, so run the registered module's CLI instead of defining (and registering) a second copy
    from transfuse_monai.tasks import hip as _registered

    sys.exit(_registered.main())

#: Class names by mask value; left / right are the patient's sides.
HIP_CLASSES: tuple[str, ...] = ("background", "pelvis", "left femur", "right femur")
#: Split name -> list key of the datalist JSON (MONAI's decathlon convention).
HIP_DATALIST_KEYS: dict[str, str] = {"train": "training", "val": "validation", "test": "test"}

#: File name endings read as radiographs (DICOM files without an extension are recognised by their preamble).
RADIOGRAPH_EXTENSIONS: tuple[str, ...] = DICOM_EXTENSIONS + IMAGE_EXTENSIONS + NIFTI_EXTENSIONS


# ------------------------------------------------------------------------------------------------------ reading


def _kind(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"raster"`` or ``"nifti"`` from the name (or the DICOM preamble of a file without suffix)."""
    name = os.fspath(path).lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if name.endswith(IMAGE_EXTENSIONS):
        return "raster"
    if name.endswith(DICOM_EXTENSIONS):
        return "dicom"
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return "dicom"
    except OSError:
        pass
    raise ValueError(
        f"'{os.fspath(path)}' is not a radiograph this task reads: expected DICOM ({', '.join(DICOM_EXTENSIONS)} or "
        f"a DICOM file without extension), {', '.join(IMAGE_EXTENSIONS)} or {', '.join(NIFTI_EXTENSIONS)}."
    )


def _dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """``((row, column) spacing in mm, source attribute)`` of a DICOM radiograph, ``(None, "")`` when absent."""
    for attr in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(attr)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return (float(value[0]), float(value[1])), attr
    return None, ""


def _nifti_spacing(img) -> tuple[float, float] | None:
    zooms = img.header.get_zooms()
    if len(zooms) >= 2 and all(float(z) > 0 for z in zooms[:2]):
        return float(zooms[0]), float(zooms[1])
    return None


def _to_grey(array: np.ndarray) -> np.ndarray:
    """(H, W) from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): the mean of the colour channels (alpha dropped)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        colours = array[..., : 3 if array.shape[-1] >= 3 else 1].astype(np.float32)
        return colours.mean(axis=-1)
    raise ValueError(f"expected a 2D grey or colour picture, got an array of shape {array.shape}")


def read_radiograph(
    path: str | os.PathLike,
    label: bool = False,
    window: bool = True,
    invert_monochrome1: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one radiograph (or label map) as a ``(H, W)`` array with its pixel spacing.

    Args:
        path: DICOM, PNG / JPEG / BMP / TIFF or NIfTI file.
        label: read a label map: the stored values, first channel of a colour file, no intensity mapping.
        window: DICOM images: apply the VOI LUT (``WindowCenter`` / ``WindowWidth`` or a VOI LUT sequence) after
            the modality LUT, when the file has one.
        invert_monochrome1: DICOM images: invert MONOCHROME1 data so that high values are bright (bone).

    Returns:
        ``(array, info)``: a float32 array (integer for labels) and ``{"spacing": (row, col) mm or None,
        "spacing_source": str, "format": "dicom" | "raster" | "nifti", "photometric_interpretation": str}``.

    Raises:
        ValueError: an unsupported file type, a file that cannot be decoded, or not a 2D picture (named).
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"radiograph file not found: '{path}'")
    kind = _kind(path)
    info: dict[str, Any] = {"spacing": None, "spacing_source": "", "format": kind, "photometric_interpretation": ""}
    try:
        if kind == "dicom":
            import pydicom
            from pydicom.pixels import apply_modality_lut, apply_voi_lut

            ds = pydicom.dcmread(path)
            array = ds.pixel_array
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
            info["photometric_interpretation"] = photometric
            info["spacing"], info["spacing_source"] = _dicom_spacing(ds)
            if label:
                array = array if array.ndim == 2 else array[..., 0]
            else:
                if photometric.startswith("MONOCHROME"):
                    array = apply_modality_lut(array, ds)
                    if window and ("WindowCenter" in ds or "VOILUTSequence" in ds):
                        array = apply_voi_lut(array, ds, index=0)
                    array = np.asarray(array, dtype=np.float32)
                    if photometric == "MONOCHROME1" and invert_monochrome1:
                        array = float(array.max()) + float(array.min()) - array
                else:  # RGB / YBR DICOM (secondary captures of radiographs)
                    array = _to_grey(np.asarray(array))
        elif kind == "raster":
            with Image.open(path) as pic:
                pic.load()
                if pic.mode == "P":
                    pic = pic.convert("RGB") if not label else pic
                array = np.asarray(pic)
            if label:
                array = array if array.ndim == 2 else array[..., 0]
            else:
                array = _to_grey(array)
        else:
            import nibabel as nib

            nii = nib.load(path)
            array = np.asanyarray(nii.dataobj)
            info["spacing"] = _nifti_spacing(nii)
            info["spacing_source"] = "NIfTI pixdim" if info["spacing"] else ""
            while array.ndim > 2 and array.shape[-1] == 1:
                array = array[..., 0]
    except Exception as err:  # noqa: BLE001 - pydicom / PIL / nibabel raise many types for broken files
        raise ValueError(f"unreadable or corrupt file '{path}': {type(err).__name__}: {err}") from err
    if array.ndim != 2:
        raise ValueError(f"'{path}' is not a 2D radiograph: its pixel array has shape {tuple(array.shape)}")
    if label:
        return np.asarray(array), info
    return np.asarray(array, dtype=np.float32), info


def probe_radiograph(path: str | os.PathLike) -> tuple[tuple[int, int], tuple[float, float] | None, str]:
    """``((H, W), spacing or None, spacing source)`` of a file, its pixel data decoded once to catch broken and
    truncated files (a 2D picture is small; PNG / JPEG are decoded without the grey conversion).

    Raises:
        ValueError: the file is not a readable 2D radiograph (named in the message).
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: '{path}'")
    if _kind(path) == "raster":
        try:
            with Image.open(path) as pic:
                size, frames = pic.size, int(getattr(pic, "n_frames", 1) or 1)
                pic.load()  # full decode: a truncated JPEG fails here, not in a DataLoader worker
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"unreadable or corrupt file '{path}': {type(err).__name__}: {err}") from err
        if frames > 1:
            raise ValueError(f"'{path}' holds {frames} frames (a 3D or multi-page file): a 2D radiograph is expected")
        return (size[1], size[0]), None, ""
    array, info = read_radiograph(path, label=True)
    return (int(array.shape[0]), int(array.shape[1])), info["spacing"], info["spacing_source"]


def _affine(spacing: Sequence[float] | None) -> np.ndarray:
    affine = np.eye(4)
    if spacing is not None:
        affine[0, 0], affine[1, 1] = float(spacing[0]), float(spacing[1])
    return affine


class RadiographReader(ImageReader):
    """MONAI image reader of radiographs for :class:`~monai.transforms.LoadImaged`: DICOM DX / CR (modality and VOI
    LUTs, MONOCHROME1 inverted), grey or colour PNG / JPEG / BMP / TIFF (reduced to grey) and NIfTI, as ``(H, W)``
    arrays whose affine carries the pixel spacing in mm when the file has one (``meta["spacing"]`` is then set too;
    a file without spacing gets an identity affine and no ``"spacing"``, see :class:`RadiographSpacingd`).

    Args:
        label: read label maps (stored values, no intensity mapping).
        window: apply the DICOM VOI LUT (windowing) when present.
        invert_monochrome1: invert MONOCHROME1 DICOM images.

    Example::

        LoadImaged(keys="image", reader=RadiographReader(), image_only=True)
    """

    def __init__(self, label: bool = False, window: bool = True, invert_monochrome1: bool = True) -> None:
        super().__init__()
        self.label = bool(label)
        self.window = bool(window)
        self.invert_monochrome1 = bool(invert_monochrome1)

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        try:
            return all(_kind(n) in ("dicom", "raster", "nifti") for n in names)
        except ValueError:
            return False

    def read(self, data, **kwargs):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise ValueError(f"RadiographReader reads one file per item, got {len(names)}: {names}")
        return read_radiograph(
            names[0], label=self.label, window=self.window, invert_monochrome1=self.invert_monochrome1
        )

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        array, info = img
        meta: dict[str, Any] = {
            # (W, H), as MONAI's PILReader records it (MONAI Label's Restored compares its (W, H) result with it)
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[::-1]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.AFFINE: _affine(info["spacing"]),
            MetaKeys.ORIGINAL_AFFINE: _affine(info["spacing"]),
            "format": info["format"],
            "spacing_source": info["spacing_source"] or "none",
        }
        if info["photometric_interpretation"]:
            meta["photometric_interpretation"] = info["photometric_interpretation"]
        if info["spacing"] is not None:
            meta["spacing"] = np.asarray(info["spacing"], dtype=np.float64)
        return array, meta


def _as_spacing(value: Any, where: str) -> tuple[float, float]:
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
            spacing = _as_spacing(np.asarray(meta["spacing"]).tolist(), f"'{name}'")
        elif listed is not None:
            spacing = _as_spacing(listed, f"datalist item of '{name}'")
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


# ----------------------------------------------------------------------------------------------------- datalists


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"hip datalist file not found: '{path}'")
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"hip datalist '{path}' is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"hip datalist '{path}' must be a JSON object with 'training'/'validation'/'test' lists.")
    return content


def radiograph_datalist(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Inference items ``[{"image": path[, "spacing": [row, col]]}, ...]`` from a folder of radiographs, one
    radiograph, or a hip datalist JSON (its ``split`` list: the images, with their datalist spacing; relative paths
    are relative to the file's folder).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no radiograph found, or the JSON has no ``split`` list.
    """
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(source))))
    if path.is_dir():
        items = [
            {"image": str(p)} for p in sorted(path.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(RADIOGRAPH_EXTENSIONS)
        ]
    elif path.is_file() and path.name.lower().endswith(RADIOGRAPH_EXTENSIONS):  # one radiograph
        items = [{"image": str(path)}]
    elif path.is_file():
        content = _load_json(path)
        key = HIP_DATALIST_KEYS.get(split, split)
        if key not in content:
            raise ValueError(f"hip datalist '{path}' has no '{key}' list (keys: {sorted(content)}).")
        default_spacing = content.get("spacing")
        items = []
        for e in content[key]:
            item = {"image": str(path.parent / (e["image"] if isinstance(e, Mapping) else e))}
            spacing = e.get("spacing", default_spacing) if isinstance(e, Mapping) else default_spacing
            if spacing is not None:
                item["spacing"] = list(_as_spacing(spacing, f"'{path}' item '{item['image']}'"))
            items.append(item)
    else:
        raise FileNotFoundError(
            f"inference input not found: '{path}' (a folder of radiographs, a radiograph or a datalist JSON)"
        )
    if not items:
        raise ValueError(f"no radiograph ({', '.join(RADIOGRAPH_EXTENSIONS)}) found in '{path}'.")
    return items


def make_split_datalist(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    output: str | os.PathLike,
    seed: int = 0,
    ratios: Sequence[float] = (7, 1, 2),
    spacing: float | Sequence[float] | None = None,
) -> dict:
    """Write the paper's random train / validation / test split (7:1:2 by default) of image / label pairs as a
    hip datalist JSON, paths relative to the JSON file's folder (the dataset folder).

    Images and labels are paired by file name without extension (``0001.dcm`` with ``0001.png``); the shuffle is
    MONAI's :func:`~monai.data.partition_dataset` with ``seed``, so the split is reproducible.

    Args:
        images_dir: folder of radiographs.
        labels_dir: folder of label maps (values 0..3).
        output: the JSON file to write (atomically).
        seed: seed of the shuffle.
        ratios: relative sizes of the training, validation and test parts.
        spacing: optional file-level ``spacing`` (mm) for images without one of their own.

    Returns:
        The datalist written.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: images without a label (or labels without an image), no pair, or bad ratios.
    """
    images_dir, labels_dir, output = Path(images_dir), Path(labels_dir), Path(output).absolute()
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: '{folder}'")
    if len(ratios) != 3 or any(float(r) < 0 for r in ratios) or sum(float(r) for r in ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, validation, test), got {list(ratios)}.")

    def scan(folder: Path) -> dict[str, Path]:
        return {
            file_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(RADIOGRAPH_EXTENSIONS)
        }

    images, labels = scan(images_dir), scan(labels_dir)
    problems = [f"image without label: '{images[s]}'" for s in sorted(set(images) - set(labels))]
    problems += [f"label without image: '{labels[s]}'" for s in sorted(set(labels) - set(images))]
    if problems:
        raise ValueError("cannot pair images and labels:\n" + "\n".join(f"  - {p}" for p in problems))
    if not images:
        raise ValueError(f"no radiograph found in '{images_dir}'.")
    base = output.parent
    items = [
        {"image": os.path.relpath(images[s].absolute(), base), "label": os.path.relpath(labels[s].absolute(), base)}
        for s in sorted(images)
    ]
    parts = partition_dataset(items, ratios=[float(r) for r in ratios], shuffle=True, seed=int(seed))
    content: dict[str, Any] = {
        "description": f"hip radiographs, random {':'.join(f'{r:g}' for r in ratios)} split, seed {seed}",
        **({"spacing": list(_as_spacing(spacing, "make_split_datalist"))} if spacing is not None else {}),
        "training": parts[0],
        "validation": parts[1],
        "test": parts[2],
    }
    atomic_write_json(output, content)
    return content


# ---------------------------------------------------------------------------------------------- generated sample


def draw_hip(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic AP hip radiograph ``(H, W)`` float in [0, 1] (bone bright) and its label map (uint8 0..3): the
    pelvis as an elliptic ring in the upper half, the patient's right femur (3) on the image's left and the left
    femur (2) on the image's right, each a head and a shaft."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    label = np.zeros((height, width), dtype=np.uint8)
    cy, cx = height * rng.uniform(0.28, 0.34), width * rng.uniform(0.47, 0.53)
    ry, rx = height * 0.2, width * 0.33
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    label[(r <= 1.0) & (r >= 0.35)] = 1
    for value, side in ((3, -1), (2, 1)):  # patient's right femur on the image's left
        hx = cx + side * width * rng.uniform(0.22, 0.26)
        hy = height * rng.uniform(0.5, 0.56)
        head = (yy - hy) ** 2 + (xx - hx) ** 2 <= (min(height, width) * 0.09) ** 2
        shaft = (yy >= hy) & (np.abs(xx - (hx + side * width * 0.03)) <= width * 0.05)
        label[head | shaft] = value
    image = 0.25 + 0.08 * rng.standard_normal((height, width))
    image += 0.15 * np.exp(-(((xx - width / 2) / (0.4 * width)) ** 2))  # soft tissue
    image[label > 0] += 0.45
    return np.clip(image, 0.0, 1.0).astype(np.float32), label


def write_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    spacing: Sequence[float] | None = (0.143, 0.143),
    monochrome1: bool = False,
    bits_stored: int = 12,
    slope: float = 1.0,
    intercept: float = 0.0,
    spacing_attr: str = "ImagerPixelSpacing",
) -> Path:
    """Write a ``(H, W)`` image in [0, 1] as a DX DICOM file (for samples and tests): stored values span
    ``bits_stored`` bits, inverted for MONOCHROME1; ``RescaleSlope`` / ``RescaleIntercept`` and a window covering
    the data are set, and the spacing (mm) under ``spacing_attr``; returns the path."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    top = (1 << int(bits_stored)) - 1
    stored = np.round(np.clip(image, 0, 1) * top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.BodyPartExamined, ds.ViewPosition = "DX", "SYNTHETIC", "HIP", "AP"
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, int(bits_stored), int(bits_stored) - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    lo, hi = intercept, top * slope + intercept
    ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:g}", f"{hi - lo + 1:g}"
    if spacing is not None:
        setattr(ds, spacing_attr, [f"{float(s):g}" for s in spacing])
    ds.PixelData = stored.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _write_nifti(path: Path, array: np.ndarray, spacing: Sequence[float]) -> None:
    import nibabel as nib

    nii = nib.Nifti1Image(np.asarray(array), _affine(spacing))
    nii.header.set_zooms((float(spacing[0]), float(spacing[1])))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nii, str(path))


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
        root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
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
        content = _load_json(path)
        key = HIP_DATALIST_KEYS[split]
        entries = content.get(key)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"hip datalist '{path}': the '{key}' list (split '{split}') is missing or empty.")
        default_spacing = content.get("spacing")
        base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        items, problems = [], []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry:
                problems.append(f"'{key}' entry #{index} needs 'image' and 'label' paths, got {entry!r}")
                continue
            item = {k: v for k, v in entry.items()}
            for k in ("image", "label"):
                p = Path(os.path.expanduser(str(entry[k])))
                item[k] = str(p if p.is_absolute() else base / p)
            item.setdefault("name", file_stem(item["image"]))
            spacing = item.get("spacing", default_spacing)
            if spacing is not None:
                try:
                    item["spacing"] = list(_as_spacing(spacing, f"'{key}' entry #{index} ('{item['image']}')"))
                except ValueError as err:
                    problems.append(str(err))
            items.append(item)
        if validate:
            problems += self._check(items, require_spacing)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ValueError(f"hip datalist '{path}', split '{split}': found {len(problems)} problem(s):\n{lines}")
        return items

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
                _write_nifti(img_path, (image * 1000).astype(np.int16), spacing)
            else:
                img_path = root_path / "images" / f"{stem}.png"
                grey = np.round(image * 255).astype(np.uint8)
                Image.fromarray(np.stack([grey] * 3, -1) if fmt == "png_rgb" else grey).save(img_path)
                if fmt == "png":
                    entry["spacing"] = list(spacing)
            if fmt == "nifti":
                lbl_path = root_path / "labels" / f"{stem}.nii.gz"
                _write_nifti(lbl_path, label, spacing)
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


# ---------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m transfuse_monai.tasks.hip split --images DIR --labels DIR --output datalist.json [--seed 0]
    [--ratios 7 1 2] [--spacing 0.143]``: write the random split as a datalist JSON."""
    parser = argparse.ArgumentParser(prog="python -m transfuse_monai.tasks.hip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="random train/validation/test split (the paper's 7:1:2) as datalist JSON")
    split.add_argument("--images", required=True, help="folder of radiographs")
    split.add_argument("--labels", required=True, help="folder of label maps (0..3), named like their image")
    split.add_argument("--output", required=True, help="datalist JSON to write (paths relative to its folder)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--ratios", type=float, nargs=3, default=[7, 1, 2], metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--spacing", type=float, nargs="+", default=None, help="default spacing (mm): one or two values")
    args = parser.parse_args(argv)
    spacing = None if args.spacing is None else (args.spacing[0] if len(args.spacing) == 1 else args.spacing)
    content = make_split_datalist(args.images, args.labels, args.output, args.seed, args.ratios, spacing)
    counts = ", ".join(f"{k} {len(content[k])}" for k in ("training", "validation", "test"))
    print(f"wrote {args.output}: {counts}")
    return 0

