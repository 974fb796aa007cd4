"""Helpers that the MONAI bundles under ``bundles/`` call from their configs."""

from transfuse_monai.bundle.utils import (
    DEMO_MARKER,
    as_bool,
    find_bundle_root,
    grouped_datalist,
    image_datalist,
    is_demo_datalist,
    is_demo_dataset,
    place_network,
    resolve_dataset,
)

__all__ = ["DEMO_MARKER", "as_bool", "find_bundle_root", "grouped_datalist", "image_datalist", "is_demo_datalist", "is_demo_dataset", "place_network", "resolve_dataset"]
