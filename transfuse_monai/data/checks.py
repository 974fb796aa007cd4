# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Start-up checks of input files, so that bad input is reported by name before anything runs, never as a stack
trace from inside a transform or a DataLoader worker.

* :func:`check_picture` decodes one 2D picture (image or mask) once and says what is wrong with it, if anything:
  missing, corrupt or truncated, a 3D / multi-page file, a pixel format the loading transforms cannot turn into the
  network's channels, mask values that are not the task's classes. The datalist builders of
  :mod:`transfuse_monai.data.datalists` (training and evaluation) collect these problems for every file and raise
  them together.
* :class:`InferenceInputs` prepares inference over a folder: unreadable inputs are skipped (with the reason), inputs
  whose output already exists are skipped unless ``overwrite``, and :meth:`InferenceInputs.write_report` writes
  ``inference_report.json`` at the end (:class:`~transfuse_monai.handlers.InferenceReport` calls it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from transfuse_monai.utils import absolute_path, atomic_write_json

__all__ = [
    "PictureCheck",
    "VolumeCheck",
    "check_picture",
    "check_volume",
    "mask_value_problem",
    "raise_problems",
    "InferenceInputs",
    "REPORT_NAME",
]

logger = logging.getLogger(__name__)

#: File name of the inference report written in the output folder.
REPORT_NAME = "inference_report.json"

#: 8-bit PIL modes the loading transforms handle, with their channel count (``PILReader`` + ``EnsureChannelFirstd``
#: + ``EnsureNumChannelsd``: a single channel is repeated, extra channels such as alpha are dropped).
_PICTURE_CHANNELS: dict[str, int] = {"1": 1, "L": 1, "RGB": 3, "RGBA": 4, "RGBX": 4}
_MODE_ADVICE: dict[str, str] = {
    "P": "a palette image (mode P), which loads as palette indices, not colours; save it as RGB",
    "PA": "a palette image with alpha (mode PA), which loads as palette indices, not colours; save it as RGB",
    "LA": "a grey-scale image with alpha (mode LA, 2 channels); save it as L or RGB",
    "CMYK": "a CMYK image; convert it to RGB",
    "YCbCr": "a YCbCr image; convert it to RGB",
    "LAB": "a Lab image; convert it to RGB",
    "HSV": "an HSV image; convert it to RGB",
}


class PictureCheck(NamedTuple):
    """What :func:`check_picture` found: ``size`` ``(W, H)`` (``None`` when unreadable), the ``problems`` (empty when
    the file is usable) and, for masks, whether the mask is ``empty`` (background only)."""

    size: tuple[int, int] | None
    problems: list[str]
    empty: bool = False


def raise_problems(problems: Sequence[str], context: str) -> None:
    """Raise one :class:`ValueError` listing every problem found (one line each) after ``context``; nothing when
    ``problems`` is empty. The start-up checks report all they find at once, before any work is spent."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"{context}: found {len(problems)} problem(s):\n{lines}")


def mask_value_problem(values: Sequence[float], num_classes: int) -> str | None:
    """Why a mask holding ``values`` (its distinct values) does not fit ``num_classes`` classes, ``None`` when it fits.

    Binary tasks (``num_classes=2``) take what :class:`~transfuse_monai.transforms.ClassIndexd` takes: 0/1 masks, or
    0/255 masks (anti-aliased edges in between allowed; divided by 255 and thresholded). A mask whose maximum is
    neither at most 1 nor 255 (0/128, 0/1/2 class maps, 16-bit values) would be read wrongly and is reported.
    Multi-class tasks need the class indices ``0 .. num_classes - 1`` themselves.
    """
    found = sorted(float(v) for v in values)
    if not found:
        return None
    shown = ", ".join(f"{v:g}" for v in found[:8]) + (" ..." if len(found) > 8 else "")
    if found[0] < 0:
        return f"holds negative value(s) ({shown})"
    if num_classes == 2:
        if found[-1] <= 1 or found[-1] == 255:
            return None
        return f"holds values {shown}: a binary mask must be 0/1 or 0/255 (background/foreground)"
    unexpected = [v for v in found if v not in range(num_classes)]
    if unexpected:
        return f"holds value(s) {shown} outside the class indices 0..{num_classes - 1}"
    return None


def check_picture(
    path: str | os.PathLike, kind: str = "image", channels: int | None = None, num_classes: int | None = None
) -> PictureCheck:
    """Decode one 2D picture (PNG, JPEG, BMP, TIFF) fully, once, and report what would break its loading.

    Reported (one line each, naming the file): missing file; unreadable, corrupt or truncated file (a truncated
    JPEG fails to decode here rather than in a DataLoader worker); several frames (a 3D stack or multi-page TIFF
    where a 2D picture is expected); for images with ``channels``: a pixel format that the loading transforms do not
    turn into ``channels`` channels (palette, grey+alpha, CMYK, 16-bit or float pixels; grey-scale is repeated to
    RGB and an alpha channel dropped, so ``L`` and ``RGBA`` are fine); for masks with ``num_classes``: values that
    are not the task's classes (:func:`mask_value_problem`). Any size is accepted (the transforms resize).

    Args:
        path: the file.
        kind: ``"image"`` or ``"mask"`` (the word used in messages; masks are checked for values, images for
            channels).
        channels: the network's input channels (images); ``None`` skips the format check.
        num_classes: the task's number of classes, background included (masks); ``None`` skips the value check.

    Returns:
        a :class:`PictureCheck`.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return PictureCheck(None, [f"{kind} file not found: '{name}' ({path})"])
    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1) or 1)
            img.load()  # full decode: raises for truncated or corrupt pixel data ("image file is truncated")
            size, mode = img.size, img.mode
            array = np.asarray(img) if kind == "mask" and num_classes is not None else None
    except Exception as err:  # noqa: BLE001 - PIL raises many exception types for bad files
        return PictureCheck(None, [f"unreadable or corrupt {kind} file '{name}' ({path}): "
                                   f"{type(err).__name__}: {err}"])
    if frames > 1:
        return PictureCheck(size, [f"{kind} '{name}' holds {frames} frames (a 3D or multi-page file); a 2D picture "
                                   f"is expected ({path})"])
    problems: list[str] = []
    empty = False
    if kind == "image" and channels is not None:
        have = _PICTURE_CHANNELS.get(mode)
        if have is None:
            why = _MODE_ADVICE.get(mode, f"{mode} pixels (16-bit, 32-bit or float); save it as 8-bit L or RGB")
            problems.append(f"{kind} '{name}' is {why} ({path})")
        elif have < channels and have != 1:
            problems.append(f"{kind} '{name}' has {have} channels ({mode}); {channels} are expected ({path})")
    if array is not None:
        values = np.unique(array if array.ndim == 2 else array[..., 0])
        why = mask_value_problem(values.tolist(), int(num_classes))
        if why:
            problems.append(f"{kind} '{name}' {why} ({path})")
        empty = bool(values.size) and float(values.max()) == 0
    return PictureCheck(size, problems, empty)


class VolumeCheck(NamedTuple):
    """What :func:`check_volume` found: the ``problems`` (empty when the files are usable) and whether the label
    is ``empty`` (background only)."""

    problems: list[str]
    empty: bool = False


def _load_header(path: str | os.PathLike | None, kind: str, image_name: str, problems: list[str]):
    import nibabel as nib

    if not path:
        problems.append(f"no {kind} file given for image '{image_name}'")
        return None
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        problems.append(f"{kind} file not found: '{name}' ({path})")
        return None
    try:
        img = nib.load(path)
        img.header.get_data_shape()
    except Exception as err:  # noqa: BLE001 - nibabel raises many exception types for bad files
        problems.append(f"unreadable {kind} file '{name}' ({path}): {type(err).__name__}: {err}")
        return None
    return img


def check_volume(
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    *,
    labelled: bool = False,
    channels: int = 1,
    num_classes: int | None = None,
    channel_names: Sequence[str] = (),
    needed_by: str = "",
    advice: str = "",
) -> VolumeCheck:
    """Check a NIfTI volume (and its label) from the headers, plus the label's values, and report what would break
    its loading, one line per problem naming the file.

    Checked: the files exist and are readable NIfTI; the image is 3D (one channel) or 4D with the channels in the
    last axis, with at least ``channels`` of them; the label is 3D, on the image's grid (same shape, affine within
    1e-3) and, with ``num_classes``, holds class indices only (:func:`mask_value_problem`; the one check that reads
    voxels, of the label only).

    Args:
        image: the image file.
        label: its label file.
        labelled: a label is required (a missing one is a problem).
        channels: channels the network takes from the image (the index of the last one used, plus one).
        num_classes: classes of the task, background included; ``None`` skips the value check.
        channel_names: names of the image's channels, in messages (``("T2", "ADC")``).
        needed_by: what needs the channels, in messages (``"modalities [0, 1]"``).
        advice: appended to the message of a 3D image where several channels are needed.

    Returns:
        a :class:`VolumeCheck`.
    """
    problems: list[str] = []
    image = os.fspath(image)
    image_name = os.path.basename(image)
    img = _load_header(image, "image", image_name, problems)
    if img is not None:
        shape, need = tuple(img.shape), needed_by or f"{channels} channel(s)"
        if len(shape) == 3 and channels > 1:
            names = f" ({', '.join(channel_names[:channels])})" if channel_names else ""
            problems.append(f"image '{image_name}' is 3D {shape}, but {need} need a 4D image with {channels} "
                            f"channels{names} in the last axis{advice} ({image})")
        elif len(shape) not in (3, 4):
            problems.append(f"image '{image_name}' has shape {shape}: expected 4D (x, y, z, channels) or 3D ({image})")
        elif len(shape) == 4 and shape[3] < channels:
            problems.append(f"image '{image_name}' has {shape[3]} channel(s) {shape}, but {need} need at least "
                            f"{channels} ({image})")
    if not labelled:
        return VolumeCheck(problems)
    lbl = _load_header(label, "label", image_name, problems)
    if lbl is None:
        return VolumeCheck(problems)
    path, shape = os.fspath(label), tuple(lbl.shape)
    name = os.path.basename(path)
    if len(shape) != 3:
        return VolumeCheck(problems + [f"label '{name}' has shape {shape}: expected a 3D volume ({path})"])
    if img is not None and len(img.shape) in (3, 4):
        if tuple(img.shape[:3]) != shape:
            problems.append(f"shape mismatch: image '{image_name}' is {tuple(img.shape[:3])} but label '{name}' is "
                            f"{shape}")
        elif not np.allclose(img.affine, lbl.affine, rtol=0, atol=1e-3):
            problems.append(f"affine mismatch: image '{image_name}' and label '{name}' are on different grids "
                            f"(affines {np.round(img.affine, 4).tolist()} and {np.round(lbl.affine, 4).tolist()})")
    try:
        values = np.unique(np.asanyarray(lbl.dataobj))
    except Exception as err:  # noqa: BLE001
        return VolumeCheck(problems + [f"unreadable label file '{name}' ({path}): {type(err).__name__}: {err}"])
    if num_classes is not None:
        why = mask_value_problem(values.tolist(), int(num_classes))
        if why:
            problems.append(f"label '{name}' {why} ({path})")
    return VolumeCheck(problems, bool(values.size) and not values.any())


def _output_path(image: str, output_dir: str, output_ext: str) -> Path:
    """Where ``SaveImaged(output_dir, output_ext, separate_folder=False, output_postfix="")`` writes the output of
    ``image`` (MONAI's own naming: the input's name without its extension, ``.nii.gz`` included)."""
    from monai.data.utils import create_file_basename

    return Path(create_file_basename("", image, output_dir, separate_folder=False) + output_ext)


class InferenceInputs:
    """The inputs of an inference run over a folder, after skipping what cannot or need not be segmented.

    Every item of ``datalist`` is checked once with ``check`` (the task's :meth:`input_problems`): an unreadable
    input is skipped with its reason instead of aborting the run from inside a DataLoader worker. An input whose
    output (``<output_dir>/<input name><output_ext>``, the bundles' ``SaveImaged`` naming) already exists is skipped
    too unless ``overwrite``, so an interrupted run can be resumed. :attr:`items` is what the run processes;
    :meth:`write_report` writes ``<output_dir>/inference_report.json`` (processed, skipped with reasons, existing)
    and logs the skipped files.

    Example (a bundle's ``inference.json``)::

        "inference_inputs": "$transfuse_monai.data.InferenceInputs(@datalist, @output_dir, @task.output_ext,
                              @task.input_problems, overwrite=@overwrite)",
        "dataset": {"_target_": "Dataset", "data": "$@inference_inputs.items", "transform": "@preprocessing"}

    Args:
        datalist: candidate items ``{"image": path, ...}`` (a folder scan, a JSON datalist).
        output_dir: the folder the outputs are written to.
        output_ext: extension of the outputs (``".png"``, ``".nii.gz"``).
        check: ``path -> list of problems`` (empty when the input is usable); ``None`` checks nothing.
        overwrite: segment inputs whose output already exists again.
        image_key: key of the input path in the items.
    """

    def __init__(
        self,
        datalist: Iterable[Mapping],
        output_dir: str | os.PathLike,
        output_ext: str,
        check: Callable[[str], Sequence[str]] | None = None,
        overwrite: bool = False,
        image_key: str = "image",
    ) -> None:
        self.output_dir = absolute_path(output_dir)
        self.output_ext = str(output_ext)
        self.overwrite = bool(overwrite)
        self.image_key = image_key
        self.items: list[dict] = []
        self.skipped: list[dict[str, str]] = []
        self.existing: list[dict[str, str]] = []
        for item in datalist:
            item = dict(item)
            image = os.fspath(item[image_key])
            problems = list(check(image)) if check is not None else []
            if problems:
                self.skipped.append({"file": image, "reason": "; ".join(problems)})
                continue
            output = _output_path(image, str(self.output_dir), self.output_ext)
            if output.is_file() and not self.overwrite:
                self.existing.append({"file": image, "output": str(output)})
                continue
            self.items.append(item)
        if self.skipped:
            logger.warning("skipping %d unreadable input(s): %s", len(self.skipped),
                           "; ".join(f"{s['file']} ({s['reason']})" for s in self.skipped))
        if self.existing:
            logger.info("skipping %d input(s) whose output already exists (overwrite=true segments them again)",
                        len(self.existing))

    @property
    def report_path(self) -> Path:
        """``<output_dir>/inference_report.json``."""
        return self.output_dir / REPORT_NAME

    def write_report(self, processed: Sequence[str] | None = None) -> Path:
        """Write ``inference_report.json`` and log the skipped inputs.

        Args:
            processed: the inputs segmented (default: every item of :attr:`items`).

        Returns:
            the report's path. Its content: ``{"processed": [{"file", "output"}], "skipped": [{"file", "reason"}],
            "existing": [{"file", "output"}], "overwrite": bool}``.
        """
        files = [os.fspath(i[self.image_key]) for i in self.items] if processed is None else list(processed)
        report = {
            "output_dir": str(self.output_dir),
            "overwrite": self.overwrite,
            "processed": [
                {"file": f, "output": str(_output_path(f, str(self.output_dir), self.output_ext))} for f in files
            ],
            "skipped": self.skipped,
            "existing": self.existing,
        }
        path = atomic_write_json(self.report_path, report)
        summary = (f"inference: {len(files)} processed, {len(self.skipped)} skipped (unreadable), "
                   f"{len(self.existing)} skipped (output exists); report: {path}")
        logger.info(summary)
        if self.skipped:
            lines = "\n".join(f"  - {s['file']}: {s['reason']}" for s in self.skipped)
            logger.warning("inference skipped %d unreadable input(s):\n%s", len(self.skipped), lines)
        return path

    def __len__(self) -> int:
        return len(self.items)
