# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""What the bundles' configs read from their ``metadata.json``: the network's input size, stated there once."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["network_input_size"]

#: the metadata file of a bundle, relative to its root (where MONAI's ``ConfigWorkflow`` looks for it by default)
METADATA_FILE = Path("configs") / "metadata.json"


def network_input_size(meta: Mapping | None, bundle_root: str | os.PathLike) -> list[int]:
    """The network's input size ``[H, W]``: the first two axes of ``spatial_shape`` in the bundle's ``metadata.json``
    (``network_data_format``, its one input), where the size is stated once.

    ``image_size`` of ``train.json`` (outside demo runs) and of ``inference.json`` is this value::

        "image_size": "$transfuse_monai.bundle.network_input_size(@_meta_, @bundle_root)"

    ``meta`` is the metadata that ``python -m monai.bundle run`` (the ``metadata.json`` beside the first config file,
    or ``--meta_file``) and MONAI Deploy (the copy embedded in the TorchScript file) load as ``_meta_``. Consumers
    that parse a config without it, such as MONAI Label's ``BundleInferTask`` or a plain ``ConfigParser``, leave
    ``_meta_`` empty; the file ``<bundle_root>/configs/metadata.json`` is read then (MONAI Label sets ``bundle_root``
    to the bundle folder). A volume bundle's further axes (prostate's free depth ``"*"``) are not the 2D network's.

    Args:
        meta: the parsed ``_meta_`` (empty or ``None`` when the config was parsed without metadata).
        bundle_root: the bundle folder, whose ``configs/metadata.json`` is read when ``meta`` has no
            ``network_data_format``.

    Returns:
        ``[H, W]`` as integers.

    Raises:
        FileNotFoundError: ``meta`` is empty and the bundle has no ``configs/metadata.json``.
        ValueError: the metadata does not describe exactly one input with at least two integer spatial axes.
    """
    source = "_meta_"
    if not meta or "network_data_format" not in meta:
        path = Path(bundle_root) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No network input size: the config was parsed without metadata (_meta_) and {path} does not exist; "
                "set bundle_root to the bundle folder or pass --image_size."
            )
        meta, source = json.loads(path.read_text()), str(path)
    inputs = dict(meta.get("network_data_format", {}).get("inputs", {}))
    if len(inputs) != 1:
        raise ValueError(f"{source}: network_data_format must describe one input, found {sorted(inputs)}.")
    ((name, spec),) = inputs.items()
    shape = list(spec.get("spatial_shape", []))[:2]
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(
            f"{source}: inputs.{name}.spatial_shape must start with the network's two integer input sizes, "
            f"got {spec.get('spatial_shape')}."
        )
    return shape
