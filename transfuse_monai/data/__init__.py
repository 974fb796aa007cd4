"""Data utilities: datalist builders/validation and synthetic datasets."""

from .datalists import (
    IMAGE_EXTENSIONS,
    ISIC2017_SPLITS,
    PRANET_TEST_SETS,
    build_image_mask_datalist,
    build_isic2017_datalist,
    build_pranet_datalist,
    build_pranet_test_datalists,
    split_datalist,
    validate_datalist,
)
from .synthetic import make_synthetic_isic2017_dataset, make_synthetic_pranet_dataset
from .writers import AtomicPILWriter

__all__ = [
    "AtomicPILWriter",
    "IMAGE_EXTENSIONS",
    "ISIC2017_SPLITS",
    "PRANET_TEST_SETS",
    "build_image_mask_datalist",
    "build_isic2017_datalist",
    "build_pranet_datalist",
    "build_pranet_test_datalists",
    "split_datalist",
    "validate_datalist",
    "make_synthetic_isic2017_dataset",
    "make_synthetic_pranet_dataset",
]
