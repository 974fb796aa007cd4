"""Generic data utilities: the file formats read (extensions by kind, file stems) and their readers (a registry by
name ending and content), datalists (pairing, validation, splits and folds, MONAI's decathlon convention, inference
lists, the ``split`` command of ``python -m transfuse_monai.data``), start-up checks of input files, generated samples,
atomic image writers. Dataset layouts live in :mod:`transfuse_monai.tasks`."""

from .formats import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, KNOWN_EXTENSIONS, NIFTI_EXTENSIONS, file_stem
from .checks import REPORT_NAME, InferenceInputs, PictureCheck, check_picture, mask_value_problem
from .datalists import (
    assign_folds,
    build_image_mask_datalist,
    decathlon_items,
    pair_by_stem,
    read_json_datalist,
    write_split_datalist,
    grouped_datalist,
    image_datalist,
    scan_images,
    split_datalist,
    validate_datalist,
)
from .readers import (
    FILE_KINDS,
    RADIOGRAPH_EXTENSIONS,
    READERS_2D,
    FileKind,
    RadiographReader,
    file_kind,
    is_dicom_file,
    probe_radiograph,
    read_radiograph,
    register_file_kind,
)
from .synthetic import draw_blob_sample, resolve_sizes, save_image_pair
from .writers import AtomicNibabelWriter, AtomicPILWriter

__all__ = [
    "InferenceInputs",
    "PictureCheck",
    "REPORT_NAME",
    "check_picture",
    "mask_value_problem",
    "AtomicNibabelWriter",
    "AtomicPILWriter",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "KNOWN_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "file_stem",
    "assign_folds",
    "build_image_mask_datalist",
    "decathlon_items",
    "pair_by_stem",
    "read_json_datalist",
    "write_split_datalist",
    "FILE_KINDS",
    "RADIOGRAPH_EXTENSIONS",
    "READERS_2D",
    "FileKind",
    "RadiographReader",
    "file_kind",
    "is_dicom_file",
    "probe_radiograph",
    "read_radiograph",
    "register_file_kind",
    "grouped_datalist",
    "image_datalist",
    "scan_images",
    "split_datalist",
    "validate_datalist",
    "draw_blob_sample",
    "resolve_sizes",
    "save_image_pair",
]
