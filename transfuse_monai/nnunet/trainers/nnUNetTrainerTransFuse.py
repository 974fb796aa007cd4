# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""nnU-Net imports this file by name from the ``nnUNet_extTrainer`` folder; the trainers live in
:mod:`transfuse_monai.nnunet.trainer`, re-exported here so that nnU-Net and Python code get the same classes."""

from transfuse_monai.nnunet.trainer import (  # noqa: F401
    nnUNetTrainerTransFuse,
    nnUNetTrainerTransFuse_5epochs,
    nnUNetTrainerTransFuse_L,
    nnUNetTrainerTransFuse_noDS,
)
