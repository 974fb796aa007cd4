# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Where a bundle lives, for configs that refer to their own files."""

from __future__ import annotations

from pathlib import Path

__all__ = ["find_bundle_root"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def find_bundle_root(name: str) -> str:
    """Absolute path of bundle ``name``: the working directory when it is that bundle (model-zoo usage, ``cd`` into
    the bundle), else ``./bundles/<name>`` (usage from the repository root), else the copy next to this package.

    Bundles copied elsewhere (MONAI Label, MONAI Deploy) set ``bundle_root`` themselves, which overrides this.
    """
    cwd = Path.cwd()
    for candidate in (cwd, cwd / "bundles" / name, _REPO_ROOT / "bundles" / name):
        meta = candidate / "configs" / "metadata.json"
        if meta.is_file() and candidate.name == name:
            return str(candidate.resolve())
    return str(cwd)
