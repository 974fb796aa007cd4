# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Readers of the files the library segments, chosen by a registry of file kinds (by name ending, then by content).

:data:`FILE_KINDS` declares each kind once: its name endings (from :mod:`transfuse_monai.data.formats`) and, where
files may come without an ending, a content test (the DICOM Part 10 preamble: ``DICM`` at byte 128, as PACS and CD
exports store ``IM00001``). :func:`file_kind` chooses the kind of a file; :func:`register_file_kind` adds one.

2D images (radiographs, exported pictures, 2D NIfTI) are read by :func:`read_radiograph` through the reader of their
kind (:data:`READERS_2D`): DICOM DX / CR through the modality LUT (``RescaleSlope`` / ``RescaleIntercept``), the VOI
LUT (``WindowCenter`` / ``WindowWidth``) and with MONOCHROME1 inverted so that bone is bright in every input; PNG /
JPEG / BMP / TIFF reduced to grey; NIfTI as stored. The pixel spacing (mm, ``(row, column)``) comes with the array:
DICOM ``PixelSpacing`` (calibrated in the patient plane) else ``ImagerPixelSpacing`` (the detector plane), or the
NIfTI header. :class:`RadiographReader` is the same reading as a MONAI :class:`~monai.data.ImageReader` for
``LoadImaged``; the MONAI Deploy applications (``deploy/``) use these functions too, so every entry point sees the
same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from monai.data import ImageReader
from monai.utils import MetaKeys

from transfuse_monai.data.formats import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, NIFTI_EXTENSIONS

__all__ = [
    "FileKind",
    "FILE_KINDS",
    "READERS_2D",
    "RADIOGRAPH_EXTENSIONS",
    "register_file_kind",
    "file_kind",
    "is_dicom_file",
    "read_radiograph",
    "probe_radiograph",
    "RadiographReader",
    "spacing_affine",
]

#: Bytes a content test sees: the DICOM preamble (128 bytes) and its ``DICM`` magic.
_HEAD_BYTES = 132


@dataclass(frozen=True)
class FileKind:
    """One kind of file: its name endings (lower case) and, optionally, a test of its first bytes for files named
    without a known ending."""

    name: str
    extensions: tuple[str, ...]
    signature: Callable[[bytes], bool] | None = None


#: The file kinds, tried in order: first by name ending, then by content.
FILE_KINDS: dict[str, FileKind] = {}


def register_file_kind(kind: FileKind) -> FileKind:
    """Add ``kind`` to :data:`FILE_KINDS` (a name already registered is an error)."""
    if kind.name in FILE_KINDS:
        raise ValueError(f"file kind '{kind.name}' is already registered.")
    FILE_KINDS[kind.name] = kind
    return kind


register_file_kind(FileKind("nifti", NIFTI_EXTENSIONS))
register_file_kind(FileKind("raster", IMAGE_EXTENSIONS))
register_file_kind(FileKind("dicom", DICOM_EXTENSIONS, signature=lambda head: head[128:132] == b"DICM"))

#: Name endings of the 2D images :func:`read_radiograph` reads (DICOM files without an ending are found by content).
RADIOGRAPH_EXTENSIONS: tuple[str, ...] = DICOM_EXTENSIONS + IMAGE_EXTENSIONS + NIFTI_EXTENSIONS


def _head(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except OSError:
        return b""


def file_kind(path: str | os.PathLike, kinds: Sequence[str] | None = None) -> str:
    """The kind of ``path`` (a key of :data:`FILE_KINDS`): by its name ending, else by its first bytes.

    Args:
        path: the file.
        kinds: the kinds accepted (default: all registered).

    Raises:
        ValueError: a file of none of ``kinds``, naming the file and the accepted endings.
    """
    accepted = [FILE_KINDS[k] for k in (kinds or FILE_KINDS)]
    name = os.fspath(path).lower()
    for kind in accepted:
        if name.endswith(kind.extensions):
            return kind.name
    if any(kind.signature for kind in accepted):
        head = _head(path)
        for kind in accepted:
            if kind.signature is not None and kind.signature(head):
                return kind.name
    endings = "; ".join(f"{k.name}: {', '.join(k.extensions)}" for k in accepted)
    raise ValueError(
        f"'{os.fspath(path)}' is not a file this library reads ({endings}; DICOM files without an ending are "
        f"recognised by their preamble)."
    )


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file, by name (``.dcm``, ``.dicom``, ``.dic``) or by its Part 10 preamble."""
    try:
        return file_kind(path, ("dicom",)) == "dicom"
    except ValueError:
        return False


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


def _read_dicom(path: str, label: bool, window: bool, invert_monochrome1: bool) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    array = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spacing, source = _dicom_spacing(ds)
    info = {"spacing": spacing, "spacing_source": source, "photometric_interpretation": photometric}
    if label:
        return (array if array.ndim == 2 else array[..., 0]), info
    if not photometric.startswith("MONOCHROME"):  # RGB / YBR DICOM (secondary captures of radiographs)
        return _to_grey(np.asarray(array)), info
    array = apply_modality_lut(array, ds)
    if window and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        array = apply_voi_lut(array, ds, index=0)
    array = np.asarray(array, dtype=np.float32)
    if photometric == "MONOCHROME1" and invert_monochrome1:
        array = float(array.max()) + float(array.min()) - array
    return array, info


def _read_picture(path: str, label: bool, window: bool, invert_monochrome1: bool) -> tuple[np.ndarray, dict]:
    with Image.open(path) as pic:
        pic.load()
        if pic.mode == "P" and not label:
            pic = pic.convert("RGB")
        array = np.asarray(pic)
    if label:
        return (array if array.ndim == 2 else array[..., 0]), {}
    return _to_grey(array), {}


def _read_nifti(path: str, label: bool, window: bool, invert_monochrome1: bool) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    nii = nib.load(path)
    array = np.asanyarray(nii.dataobj)
    spacing = _nifti_spacing(nii)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return array, {"spacing": spacing, "spacing_source": "NIfTI pixdim" if spacing else ""}


#: The 2D reader of each file kind: ``(path, label, window, invert_monochrome1) -> (array, info)``.
READERS_2D: dict[str, Callable[[str, bool, bool, bool], tuple[np.ndarray, dict]]] = {
    "dicom": _read_dicom,
    "raster": _read_picture,
    "nifti": _read_nifti,
}


def read_radiograph(
    path: str | os.PathLike,
    label: bool = False,
    window: bool = True,
    invert_monochrome1: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one radiograph (or label map) as a ``(H, W)`` array with its pixel spacing, through the reader of its
    kind (:data:`READERS_2D`, kind from :func:`file_kind`).

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
    kind = file_kind(path, tuple(READERS_2D))
    try:
        array, found = READERS_2D[kind](path, label, window, invert_monochrome1)
    except Exception as err:  # noqa: BLE001 - pydicom / PIL / nibabel raise many types for broken files
        raise ValueError(f"unreadable or corrupt file '{path}': {type(err).__name__}: {err}") from err
    info: dict[str, Any] = {"spacing": None, "spacing_source": "", "format": kind, "photometric_interpretation": ""}
    info.update(found)
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
    if file_kind(path, tuple(READERS_2D)) == "raster":
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


def spacing_affine(spacing: Sequence[float] | None) -> np.ndarray:
    """The 4x4 affine of a 2D image with ``(row, column)`` pixel spacing in mm (the identity without spacing)."""
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
            return all(file_kind(n, tuple(READERS_2D)) in READERS_2D for n in names)
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
            MetaKeys.AFFINE: spacing_affine(info["spacing"]),
            MetaKeys.ORIGINAL_AFFINE: spacing_affine(info["spacing"]),
            "format": info["format"],
            "spacing_source": info["spacing_source"] or "none",
        }
        if info["photometric_interpretation"]:
            meta["photometric_interpretation"] = info["photometric_interpretation"]
        if info["spacing"] is not None:
            meta["spacing"] = np.asarray(info["spacing"], dtype=np.float64)
        return array, meta
