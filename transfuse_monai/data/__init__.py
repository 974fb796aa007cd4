"""Generic data utilities: the file formats read (extensions by kind, file stems), datalists of image/mask pairs
(pairing, validation, splits, inference lists), start-up checks of input files, drawing primitives of generated
samples, atomic image writers. Dataset layouts live in :mod:`transfuse_monai.tasks`."""

from .formats import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, KNOWN_EXTENSIONS, NIFTI_EXTENSIONS, file_stem
from .checks import REPORT_NAME, InferenceInputs, PictureCheck, check_picture, mask_value_problem
from .datalists import (
    build_image_mask_datalist,
    grouped_datalist,
    image_datalist,
    scan_images,
    split_datalist,
    validate_datalist,
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
    "build_image_mask_datalist",
    "grouped_datalist",
    "image_datalist",
    "scan_images",
    "split_datalist",
    "validate_datalist",
    "draw_blob_sample",
    "resolve_sizes",
    "save_image_pair",
]
