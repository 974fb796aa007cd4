"""Generic data utilities: datalists of image/mask pairs (pairing, validation, splits, inference lists), drawing
primitives of generated samples, atomic image writers. Dataset layouts live in :mod:`transfuse_monai.tasks`."""

from .datalists import (
    IMAGE_EXTENSIONS,
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
    "AtomicNibabelWriter",
    "AtomicPILWriter",
    "IMAGE_EXTENSIONS",
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
