"""Losses of transfuse-monai."""

from transfuse_monai.losses.structure_loss import TRANSFUSE_DS_WEIGHTS, DeepSupervisionStructureLoss, StructureLoss

__all__ = ["TRANSFUSE_DS_WEIGHTS", "DeepSupervisionStructureLoss", "StructureLoss"]
