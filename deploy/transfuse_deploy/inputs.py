"""What the Deploy applications read and where they write, checked before any graph starts (no MONAI Deploy imports).

* DICOM files as PACS and CD exports lay them out: folders searched recursively, files recognised by their DICOM
  preamble (``DICM`` at byte 128, any name, e.g. ``DICOM/S1/IM00001``) or a DICOM file name (``.dcm``, ``.dicom``,
  ``.dic``); ``DICOMDIR`` (the CD's index of the same files) and hidden files are skipped.
* Every DICOM file is read and its pixels decoded once (and every NIfTI volume read once; pictures are checked by
  :func:`transfuse_monai.data.checks.check_picture`, as the bundles' own datalists do), so that a truncated file, a
  transfer syntax without an installed decoder (named with the packages that decode it) or a file of another kind
  stops the application with the file's name before anything runs.
* Output paths never write over or inside what was read: an output folder that is an input file, holds an input
  file or lies inside an input folder is refused.
* Re-runs skip the inputs whose outputs are all there, unless told to overwrite.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from transfuse_monai.data.formats import DICOM_EXTENSIONS
from transfuse_monai.data.readers import is_dicom_file

__all__ = [
    "check_nifti",
    "check_output_folder",
    "decoder_problem",
    "find_dicom_files",
    "pending",
    "read_dicom",
]

logger = logging.getLogger(__name__)

#: Media Storage Directory Storage: a DICOMDIR, the index of a DICOM CD (its files are found by the folder walk).
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_dicom_files(path: str | os.PathLike) -> list[Path]:
    """The DICOM file ``path``, or every DICOM file under folder ``path`` (recursively, sorted; hidden files and
    folders and ``DICOMDIR`` skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the folder holds no DICOM file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input path {path} does not exist")
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.name.upper() != "DICOMDIR" and not _hidden(p, path) and is_dicom_file(p)
    )
    if not files:
        raise ValueError(
            f"no DICOM file in {path} (searched recursively for files named *{', *'.join(DICOM_EXTENSIONS)} or "
            "starting with the DICOM preamble)"
        )
    return files


def decoder_problem(ds: Any) -> str | None:
    """Why the pixels of dataset ``ds`` cannot be decoded here (its transfer syntax has no decoder installed, naming
    the packages that provide one), or None."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({uid}) is not supported by pydicom"
    if decoder.is_available:
        return None
    options = "; or ".join(decoder.missing_dependencies) or "a pydicom pixel data plug-in"
    return f"no decoder installed for its transfer syntax {uid.name} ({uid}): install {options}"


def read_dicom(path: str | os.PathLike, decode: bool = True, keep_pixels: bool = True) -> Any:
    """Read one DICOM file with pydicom and, with ``decode``, decode its pixels once (``pixel_array``), so that every
    problem is reported here, naming the file. Returns the dataset (pixels decoded; with ``keep_pixels=False`` the
    header alone, what a study's series selection needs, without holding every slice in memory), or None for a
    ``DICOMDIR``.

    Raises:
        ValueError: not a DICOM file, truncated, or pixels that cannot be decoded (the reason and, for a compressed
            transfer syntax without a decoder, the packages to install).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for files that are not DICOM
        raise ValueError(f"{path} is not a readable DICOM file: {type(err).__name__}: {err}") from err
    if str(ds.get("SOPClassUID", "")) == DICOMDIR_SOP_CLASS:
        return None
    if decode and "PixelData" in ds:
        problem = decoder_problem(ds)
        if problem:
            raise ValueError(f"{path}: {problem}")
        try:
            ds.pixel_array  # noqa: B018 - decoded once here, cached by pydicom
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data, wrong lengths, codec errors
            raise ValueError(f"{path}: its pixel data cannot be decoded ({type(err).__name__}: {err})") from err
    if not keep_pixels and "PixelData" in ds:
        del ds.PixelData  # pydicom drops the decoded array with it
    return ds


def check_nifti(path: str | os.PathLike) -> tuple[int, ...]:
    """Read a NIfTI volume's voxels once; returns its shape.

    Raises:
        ValueError: not a NIfTI file, truncated or not a 3D / 4D volume, naming it.
    """
    import nibabel as nib
    import numpy as np

    try:
        shape = np.asarray(nib.load(str(path)).dataobj).shape
    except Exception as err:  # noqa: BLE001 - nibabel and gzip raise many types for bad files
        raise ValueError(f"{path} is not a readable NIfTI volume: {type(err).__name__}: {err}") from err
    if len(shape) not in (3, 4):
        raise ValueError(f"{path}: a volume of shape {shape}, expected 3D (T2) or 4D (T2 + ADC, channel last)")
    return shape


def check_output_folder(output: str | os.PathLike, input_path: str | os.PathLike, inputs: Iterable[Path]) -> Path:
    """Refuse an output folder that would write over or inside what the application reads.

    Args:
        output: the output folder (need not exist yet).
        input_path: the input as given (a file or a folder).
        inputs: the files the application reads.

    Returns:
        The output folder, absolute.

    Raises:
        ValueError: the output folder is an input file, holds an input file, or is (inside) the input folder; raised
            before anything is written, naming both paths.
    """
    out = Path(output).absolute().resolve()
    source = Path(input_path).absolute().resolve()
    if source.is_dir() and (out == source or source in out.parents):
        raise ValueError(f"output folder {out} is inside the input folder {source}: choose an output folder outside "
                         "what the application reads (it never writes over or beside its input)")
    for path in inputs:
        path = Path(path).absolute().resolve()
        if path == out:
            raise ValueError(f"output folder {out} is the input file {path}: choose another output folder")
        if out in path.parents:
            raise ValueError(f"output folder {out} holds the input file {path}: choose an output folder that holds no "
                             "input (the application never writes over or beside its input)")
    return out


def pending(outputs: dict[Any, Sequence[Path]], overwrite: bool) -> list[Any]:
    """The inputs (keys of ``outputs``, each with the files it produces) still to process: all of them with
    ``overwrite``, else those whose files are not all there (the others are logged as skipped)."""
    if overwrite:
        return list(outputs)
    todo = []
    for key, files in outputs.items():
        if files and all(Path(f).is_file() for f in files):
            logger.info("skipping %s: already done (%s; --overwrite to compute it again)", key,
                        ", ".join(str(f) for f in files))
        else:
            todo.append(key)
    return todo
