# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""TransFuse's options in nnU-Net's plans: a configuration of ``nnUNetPlans.json`` that inherits from ``2d`` and adds
a ``"transfuse"`` entry (nnU-Net's own way to vary a configuration: the pre-processed data is shared)::

    "2d_transfuse_L": {"inherits_from": "2d", "transfuse": {"variant": "L", "cnn_weights": "/w/res2net50.pth"}}

``nnUNetv2_train <dataset> 2d_transfuse_L <fold> -tr nnUNetTrainerTransFuse`` then trains TransFuse-L. This module
imports without nnU-Net.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from transfuse_monai.networks.nets.transfuse import PATCH_SIZE, TRANSFUSE_PRESETS
from transfuse_monai.utils import atomic_write_json

__all__ = [
    "NETWORK_OPTIONS",
    "PLANS_KEY",
    "PRETRAINED_OPTIONS",
    "add_transfuse_configuration",
    "check_options",
    "preprocessed_dataset",
    "transfuse_patch_size",
]

#: The key of a plans configuration holding TransFuse's options (``{"variant": "L", "dropout": 0.3}``).
PLANS_KEY = "transfuse"
#: Options of :class:`~transfuse_monai.networks.nets.TransFuse` that a plans entry may set (they shape the network).
NETWORK_OPTIONS = (
    "variant", "cnn_name", "vit_name", "depth", "bifusion", "dropout", "drop_path_rate", "align_corners",
)
#: Options that only initialise a training (never needed to predict).
PRETRAINED_OPTIONS = ("pretrained", "cnn_weights", "vit_weights")


def transfuse_patch_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    """``patch_size`` with every axis rounded up to a multiple of TransFuse's 16 (``(40, 56)`` -> ``(48, 64)``)."""
    return tuple(int(math.ceil(int(s) / PATCH_SIZE) * PATCH_SIZE) for s in patch_size)


def check_options(options: Mapping, where: str, check_files: bool = True) -> None:
    """Raise a ``ValueError`` naming ``where`` for an unknown option or variant, and (``check_files``) a
    ``FileNotFoundError`` for a weights file that is missing."""
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a dictionary of TransFuse options, got {options!r}.")
    unknown = sorted(set(options) - set(NETWORK_OPTIONS) - set(PRETRAINED_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown TransFuse option(s) {unknown} in {where}; known: "
                         f"{list(NETWORK_OPTIONS + PRETRAINED_OPTIONS)}.")
    if "variant" in options and options["variant"] not in TRANSFUSE_PRESETS:
        raise ValueError(f"Unknown TransFuse variant {options['variant']!r} in {where}; choose one of "
                         f"{sorted(TRANSFUSE_PRESETS)}.")
    for key in ("cnn_weights", "vit_weights") if check_files else ():
        if options.get(key) and not Path(options[key]).is_file():
            raise FileNotFoundError(f"{key} '{options[key]}' in {where} is not a file.")


def preprocessed_dataset(dataset: str | int, preprocessed_root: str | os.PathLike | None = None) -> Path:
    """The folder of ``dataset`` (an ID or ``DatasetXXX_Name``) in nnU-Net's pre-processed folder.

    Raises:
        ValueError: no pre-processed folder is given or set.
        FileNotFoundError: no such dataset (run ``nnUNetv2_plan_and_preprocess`` first).
    """
    root = preprocessed_root if preprocessed_root is not None else os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ValueError("No nnU-Net preprocessed folder: pass --preprocessed DIR or set nnUNet_preprocessed.")
    root = Path(root)
    text = str(dataset)
    pattern = text if text.startswith("Dataset") else f"Dataset{int(text):03d}_*"
    found = sorted(p for p in root.glob(pattern) if p.is_dir()) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"No pre-processed nnU-Net dataset '{dataset}' in '{root}'; run nnUNetv2_plan_and_preprocess -d <ID> "
            "-c 2d first."
        )
    if len(found) > 1:
        raise ValueError(f"Several pre-processed datasets match '{dataset}' in '{root}': {[p.name for p in found]}.")
    return found[0]


def _resolved(configurations: Mapping, name: str) -> dict:
    configuration = dict(configurations[name])
    seen = {name}
    while "inherits_from" in configuration:
        parent = configuration.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise ValueError(f"Configuration '{name}' inherits from '{parent}', which is missing or circular.")
        seen.add(parent)
        configuration = {**configurations[parent], **configuration}
    return configuration


def add_transfuse_configuration(
    dataset: str | int,
    name: str,
    options: Mapping,
    parent: str = "2d",
    plans_identifier: str = "nnUNetPlans",
    batch_size: int | None = None,
    replace: bool = False,
    preprocessed_root: str | os.PathLike | None = None,
) -> Path:
    """Add configuration ``name`` (``inherits_from`` ``parent``, ``"transfuse": options``) to a dataset's plans.

    The plans file is rewritten atomically with its other configurations unchanged.

    Args:
        dataset: dataset ID or name.
        name: the new configuration.
        options: TransFuse's options (:data:`NETWORK_OPTIONS`, :data:`PRETRAINED_OPTIONS`); weight paths are stored
            absolute.
        parent: a 2D configuration of the plans.
        plans_identifier: the plans file's name without ``.json``.
        batch_size: the configuration's batch size; ``None`` keeps the parent's.
        replace: replace an existing configuration ``name``.
        preprocessed_root: nnU-Net's pre-processed folder; defaults to ``$nnUNet_preprocessed``.

    Returns:
        the plans file.

    Raises:
        ValueError: bad options, a parent that is missing or not 2D, an existing ``name`` without ``replace``.
        FileNotFoundError: no such dataset, plans file or weights file.
    """
    plans_file = preprocessed_dataset(dataset, preprocessed_root) / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"No plans file '{plans_file}'; run nnUNetv2_plan_and_preprocess first.")
    check_options(options, f"the options of configuration '{name}'")
    plans = json.loads(plans_file.read_text())
    configurations = plans.get("configurations", {})
    if parent not in configurations:
        raise ValueError(f"'{plans_file}' has no configuration '{parent}'; it has {sorted(configurations)}.")
    patch = _resolved(configurations, parent).get("patch_size", [])
    if len(patch) != 2:
        raise ValueError(f"Configuration '{parent}' of '{plans_file}' is not 2D (patch size {patch}); TransFuse is 2D.")
    if name in configurations and not replace:
        raise ValueError(f"'{plans_file}' already has a configuration '{name}'; pass --replace to replace it.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    entry = {k: (str(Path(v).resolve()) if k in ("cnn_weights", "vit_weights") and v else v)
             for k, v in options.items()}
    configuration: dict = {"inherits_from": parent, PLANS_KEY: entry}
    if batch_size is not None:
        configuration["batch_size"] = int(batch_size)
    configurations[name] = configuration
    atomic_write_json(plans_file, plans)
    return plans_file
