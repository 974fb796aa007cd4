# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""TransFuse inside nnU-Net v2 (the ``[nnunet]`` extra: ``pip install transfuse-monai[nnunet]``).

* :mod:`~transfuse_monai.nnunet.trainer`: ``nnUNetTrainerTransFuse`` and its variants, selected with ``-tr``;
* :mod:`~transfuse_monai.nnunet.convert`: a 2D task's dataset in nnU-Net's raw format;
* ``python -m transfuse_monai.nnunet env | convert | configure``: the line that makes nnU-Net find the trainers, the
  conversion, and a plans configuration holding TransFuse's options.

This package imports without nnU-Net; the trainer module needs it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TRAINERS_FOLDER", "ext_trainer_value"]

#: The folder that ``nnUNet_extTrainer`` must name for nnU-Net to find the trainers of this package.
TRAINERS_FOLDER = Path(__file__).resolve().parent / "trainers"


def ext_trainer_value(current: str | None = None) -> str:
    """The value of ``nnUNet_extTrainer`` naming :data:`TRAINERS_FOLDER`, after the folders of ``current`` (an
    existing value, kept; the folder is not repeated)."""
    import os

    folders = [f for f in (current or "").split(os.pathsep) if f]
    if str(TRAINERS_FOLDER) not in folders:
        folders.append(str(TRAINERS_FOLDER))
    return os.pathsep.join(folders)
