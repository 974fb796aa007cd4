"""Losses of transfuse-monai."""

from transfuse_monai.losses.structure_loss import (
    TRANSFUSE_DS_WEIGHTS,
    DeepSupervisionStructureLoss,
    StructureLoss,
    unstack_heads,
)
from transfuse_monai.losses.transfuse_loss import ACTIVATIONS, LOSS_NAMES, TransFuseLoss

__all__ = [
    "ACTIVATIONS",
    "LOSS_NAMES",
    "TRANSFUSE_DS_WEIGHTS",
    "DeepSupervisionStructureLoss",
    "StructureLoss",
    "TransFuseLoss",
    "unstack_heads",
]
