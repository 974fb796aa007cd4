# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The file formats the library reads, named once: the extensions of each kind and the stem of a file name.

Used by the task modules (which files are images, radiographs, volumes), the datalists, the inference outputs and
the MONAI Deploy applications (``deploy/``), so that a format added here is read everywhere.
"""

from __future__ import annotations

import os

__all__ = ["DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "KNOWN_EXTENSIONS", "NIFTI_EXTENSIONS", "file_stem"]

#: 2D pictures (endoscopy and dermoscopy frames, exported radiographs), read with PIL.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: DICOM files named as such (files without an extension are recognised by their preamble where DICOM is read).
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom", ".dic")
#: NIfTI volumes, compressed first so that ``.nii.gz`` is taken whole.
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
#: Every ending :func:`file_stem` removes.
KNOWN_EXTENSIONS: tuple[str, ...] = NIFTI_EXTENSIONS + DICOM_EXTENSIONS + IMAGE_EXTENSIONS


def file_stem(path: str | os.PathLike) -> str:
    """The file name without its known extension (case-insensitive; ``.nii.gz`` whole), the stem of the outputs made
    from it: ``case_01.nii.gz`` -> ``case_01``, ``frame.PNG`` -> ``frame``. A name with no known extension is kept
    whole (``IM00001``, a UID such as ``1.2.840.113619.2.1``: its last dot-part is not an extension)."""
    name = os.path.basename(os.fspath(path))
    lower = name.lower()
    for ext in KNOWN_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name
