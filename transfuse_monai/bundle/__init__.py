"""Helpers that the MONAI bundles under ``bundles/`` call from their configs: run options parsed once
(:class:`FastPaths`, :func:`as_bool`), the inference runtime (:class:`InferenceRuntime`: PyTorch or an export
run by ONNX Runtime or OpenVINO), the bundle's own location, the network input size its ``metadata.json``
states (:func:`network_input_size`) and the check that its trained weights exist (:func:`require_weights`).
Dataset-specific code is in :mod:`transfuse_monai.tasks`."""

from transfuse_monai.bundle.metadata import network_input_size
from transfuse_monai.bundle.options import (
    FastPaths,
    Precision,
    as_bool,
    choose_precision,
    default_num_workers,
    place_network,
)
from transfuse_monai.bundle.paths import find_bundle_root
from transfuse_monai.bundle.runtime import BACKENDS, Backend, InferenceRuntime, choose_backend
from transfuse_monai.bundle.weights import require_weights

__all__ = [
    "BACKENDS",
    "Backend",
    "InferenceRuntime",
    "choose_backend",
    "FastPaths",
    "Precision",
    "choose_precision",
    "as_bool",
    "default_num_workers",
    "find_bundle_root",
    "network_input_size",
    "place_network",
    "require_weights",
]
