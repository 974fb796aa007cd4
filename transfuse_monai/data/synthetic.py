"""Generated samples: the drawing of each kind of synthetic case and the writers of the files scanners produce.

Each task module of :mod:`transfuse_monai.tasks` (``make_sample``) chooses the parameters and the folder layout; the
drawing and the file writing live here:

- pictures (polyp, ISIC 2017): small RGB pictures with a smooth textured background and one or more elliptical
  "lesions" of a clearly different colour, with binary 0/255 masks (:func:`draw_blob_sample`, :func:`save_image_pair`);
- hip radiographs: a pelvis ring and two femurs on the patient's sides (:func:`draw_hip`), written as DICOM DX
  (:func:`write_dicom`), PNG or 2D NIfTI (:func:`write_nifti_2d`);
- prostate MRI: T2 / ADC volumes with the peripheral and transition zones (:func:`draw_prostate`), and DICOM MR series
  as a scanner exports them (:func:`write_mr_series`, for the Deploy tests and benchmark).

They serve tests, demo runs of the bundles and tutorials: a few iterations of training are enough for a network to
improve its Dice score on them. Every drawing is deterministic given its ``numpy`` generator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transfuse_monai.data.readers import spacing_affine
from transfuse_monai.utils.io import atomic_path

__all__ = [
    "resolve_sizes",
    "draw_blob_sample",
    "save_image_pair",
    "draw_hip",
    "write_dicom",
    "write_nifti_2d",
    "draw_prostate",
    "write_mr_series",
]

PathLike = str | os.PathLike
SizeSpec = tuple[int, int] | Sequence[tuple[int, int]] | None


def _is_size(value: object) -> bool:
    """Return ``True`` if ``value`` looks like a single ``(height, width)`` pair."""
    return isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)


def resolve_sizes(spec: SizeSpec, default: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Expand a size spec (``None``, one ``(h, w)`` or a list of them, cycled) into ``n`` sizes."""
    if spec is None:
        sizes = [tuple(default)]
    elif _is_size(spec):
        sizes = [tuple(spec)]
    else:
        sizes = [tuple(s) for s in spec]
        if not sizes or not all(_is_size(s) for s in sizes):
            raise ValueError(f"Invalid size specification: {spec!r}, expected (height, width) or a list of them.")
    out = [(int(sizes[i % len(sizes)][0]), int(sizes[i % len(sizes)][1])) for i in range(n)]
    for h, w in out:
        if h < 8 or w < 8:
            raise ValueError(f"Synthetic images must be at least 8x8 pixels, got (height, width)=({h}, {w}).")
    return out


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int = 8) -> np.ndarray:
    """Low-frequency RGB noise in ``[-1, 1]`` of shape ``(height, width, 3)``."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.uniform(0.0, 255.0, size=(gh, gw, 3)).astype(np.uint8)
    up = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return up / 127.5 - 1.0


def draw_blob_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    background: tuple[int, int, int],
    lesion: tuple[int, int, int],
    n_lesions: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one textured image with ``n_lesions`` ellipses and return ``(rgb uint8, mask uint8 0/255)``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.asarray(background, dtype=np.float32) + rng.uniform(-15, 15, size=3)
    img = bg + 25.0 * _smooth_noise(rng, height, width) + rng.normal(0.0, 6.0, size=(height, width, 3))

    mask = np.zeros((height, width), dtype=bool)
    short = min(height, width)
    for _ in range(n_lesions):
        ry = rng.uniform(0.12, 0.25) * short
        rx = rng.uniform(0.12, 0.25) * short
        cy = rng.uniform(ry + 1, height - ry - 1)
        cx = rng.uniform(rx + 1, width - rx - 1)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        r2 = (u / rx) ** 2 + (v / ry) ** 2
        inside = r2 <= 1.0
        colour = np.asarray(lesion, dtype=np.float32) + rng.uniform(-12, 12, size=3)
        # Mild radial shading so lesions are not perfectly flat.
        shade = (1.0 - 0.15 * np.clip(r2, 0.0, 1.0))[..., None]
        img = np.where(inside[..., None], colour * shade + rng.normal(0.0, 5.0, size=(height, width, 3)), img)
        mask |= inside
    if not mask.any():  # degenerate tiny images: force a non-empty mask
        mask[height // 2, width // 2] = True
        img[height // 2, width // 2] = lesion
    return np.clip(img, 0, 255).astype(np.uint8), (mask.astype(np.uint8) * 255)


def save_image_pair(
    image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path
) -> None:
    """Write an RGB image (JPEG or PNG from the extension) and a single-channel PNG mask."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    if image_path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(image_path, quality=95)
    else:
        pil.save(image_path)
    Image.fromarray(mask).save(mask_path)


# ----------------------------------------------------------------------------------------------- radiographs


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


def write_nifti_2d(path: Path, array: np.ndarray, spacing: Sequence[float]) -> None:
    """Write a 2D array as NIfTI with ``(row, column)`` spacing in mm (header zooms and affine)."""
    import nibabel as nib

    nii = nib.Nifti1Image(np.asarray(array), spacing_affine(spacing))
    nii.header.set_zooms((float(spacing[0]), float(spacing[1])))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nii, str(path))


# ------------------------------------------------------------------------------------------------- MRI volumes


def draw_prostate(
    rng: np.random.Generator,
    size: Sequence[int],
    spacing: Sequence[float],
    channels: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic prostate MRI case: ``(image, label, affine)``.

    A body ellipse (non-zero intensities) holds a gland made of two nested ellipsoids, the transition zone (label 2)
    inside the peripheral zone (label 1), each with its own T2 and ADC brightness plus noise and a random per-case
    intensity scale, so that a network can learn the zones; the first and last slices hold no gland. The image is
    ``(x, y, z, 2)`` (T2, ADC in the last axis, as MSD) for ``channels=2`` and ``(x, y, z)`` (T2) for 1; the affine
    is LPS-like (``diag(-sx, -sy, sz)``, as scanners write them) with a random origin.
    """
    sx, sy, sz = (int(s) for s in size)
    # intensities (T2, ADC) of body, PZ, TZ: PZ bright on both, TZ darker on ADC
    levels = {"body": (120.0, 60.0), "pz": (260.0, 150.0), "tz": (170.0, 80.0)}
    xx, yy, zz = np.meshgrid(
        np.arange(sx) * spacing[0], np.arange(sy) * spacing[1], np.arange(sz) * spacing[2], indexing="ij"
    )
    cx, cy = sx * spacing[0] / 2 + rng.uniform(-2, 2), sy * spacing[1] / 2 + rng.uniform(-2, 2)
    cz = (sz - 1) * spacing[2] / 2
    body = ((xx - cx) / (0.46 * sx * spacing[0])) ** 2 + ((yy - cy) / (0.46 * sy * spacing[1])) ** 2 <= 1
    ax, ay = rng.uniform(0.25, 0.32) * sx * spacing[0], rng.uniform(0.22, 0.3) * sy * spacing[1]
    az = max((sz - 2.6) * spacing[2] / 2, spacing[2] * 0.8)
    gland = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 + ((zz - cz) / az) ** 2 <= 1
    shift = rng.uniform(0.1, 0.2) * ay  # TZ sits anterior to the PZ's centre
    tz = ((xx - cx) / (0.6 * ax)) ** 2 + ((yy - cy - shift) / (0.55 * ay)) ** 2 + (
        (zz - cz) / (0.8 * az)
    ) ** 2 <= 1
    label = np.zeros((sx, sy, sz), np.uint8)
    label[gland] = 1
    label[tz & gland] = 2
    scale = rng.uniform(0.8, 1.3)
    volumes = []
    for c in range(channels):
        img = np.zeros((sx, sy, sz), np.float32)
        img[body] = levels["body"][c]
        img[label == 1] = levels["pz"][c]
        img[label == 2] = levels["tz"][c]
        img = (img + body * rng.normal(0.0, 10.0, img.shape)) * scale
        volumes.append(np.clip(img, 0, None).astype(np.float32))
    image = np.stack(volumes, axis=-1) if channels == 2 else volumes[0]
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = rng.uniform(-40, 40, size=3)
    return image, label, affine


def write_mr_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    description: str,
    study: dict,
    number: int,
    modality: str = "MR",
    pixel_spacing: bool = True,
    plane: str = "axial",
) -> list[Path]:
    """Write ``volume`` ``(columns, rows, slices)`` (integers) as a DICOM series, one file per slice, as a scanner
    exports it (for samples, tests and the Deploy benchmark): axial, or sagittal (rows along the patient's feet,
    columns along posterior, slices along left).

    Args:
        folder: where the files go (``s<number>_<slice>.dcm``).
        volume: stored values, ``(columns, rows, slices)``.
        spacing: voxel size in mm along the three axes of ``volume``.
        origin_lps: position (LPS, mm) of the first voxel of the first slice.
        description: ``SeriesDescription``.
        study: ``{"uid": StudyInstanceUID, "frame_of_reference": FrameOfReferenceUID}`` shared by the study's series.
        number: ``SeriesNumber``.
        modality: ``Modality`` (``MR``; ``CT`` writes CT Image Storage).
        pixel_spacing: write ``PixelSpacing`` (False: a series without it, to test the checks).
        plane: ``"axial"`` or ``"sagittal"``.

    Returns:
        The files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    series_uid, files = generate_uid(), []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Prostate", "P1", "", "M"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study["uid"], "20260101", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyDescription = "", "", "Prostate MRI"
        ds.FrameOfReferenceUID = study["frame_of_reference"]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
        ds.Modality, ds.InstanceNumber, ds.ImageType = modality, k + 1, ["ORIGINAL", "PRIMARY", plane.upper()]
        if plane == "axial":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]),
                                       float(origin_lps[2] + k * spacing[2])]
        elif plane == "sagittal":
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [float(origin_lps[0] + k * spacing[2]), float(origin_lps[1]),
                                       float(origin_lps[2])]
        else:
            raise ValueError(f"plane must be 'axial' or 'sagittal', got {plane!r}")
        if pixel_spacing:
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype(np.uint16).tobytes()
        path = Path(folder) / f"s{number:02d}_{k:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
