# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Structure loss (boundary-weighted BCE + weighted IoU) and its deep-supervision wrapper for TransFuse.

References:
    Wei, Wang, Huang. "F3Net: Fusion, Feedback and Focus for Salient Object Detection", AAAI 2020 (the loss);
    Fan et al. "PraNet", MICCAI 2020 and Zhang et al. "TransFuse", MICCAI 2021 (its use for polyps and skin lesions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai.losses import DeepSupervisionLoss
from monai.utils import LossReduction

__all__ = ["StructureLoss", "DeepSupervisionStructureLoss", "TRANSFUSE_DS_WEIGHTS", "box_mean", "unstack_heads"]

#: Weights of TransFuse's three heads: final fused map, transformer branch, deepest fusion.
TRANSFUSE_DS_WEIGHTS = (0.5, 0.3, 0.2)


def box_mean(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Mean over a ``kernel_size`` square around every pixel of ``(B, C, H, W)`` maps, zero padding counted.

    Equals ``F.avg_pool2d(x, kernel_size, stride=1, padding=kernel_size // 2)`` (whose padding is counted in the
    average), computed as two one-dimensional passes: ``2k`` additions per pixel instead of ``k**2``. For the
    structure loss's 31x31 window that is 15 times less work; the two-dimensional pooling took a fifth of a
    bfloat16 training step of TransFuse-S on the CPU.

    Args:
        x: the maps, ``(B, C, H, W)``.
        kernel_size: odd window size.
    """
    pad = kernel_size // 2
    x = F.avg_pool2d(x, kernel_size=(kernel_size, 1), stride=1, padding=(pad, 0))
    return F.avg_pool2d(x, kernel_size=(1, kernel_size), stride=1, padding=(0, pad))


class StructureLoss(_Loss):
    """Boundary-weighted binary cross-entropy plus weighted IoU, computed per image and channel.

    With ``w = 1 + boundary_weight * |avgpool_k(mask) - mask|`` (kernel ``k``, stride 1, zero padding ``k // 2``,
    padding counted in the average), the loss of one image and class is::

        wbce = sum(w * bce(logit, mask)) / sum(w)
        wiou = 1 - (sum(p * m * w) + 1) / (sum((p + m) * w) - sum(p * m * w) + 1),   p = sigmoid(logit)

    and the result is ``wbce + wiou`` reduced over batch and channels. Each channel is an independent binary
    (sigmoid) problem, so multi-class targets such as hip bones or prostate zones work per class, one-hot encoded.

    Args:
        kernel_size: odd size of the average pooling that finds boundaries. Defaults to 31.
        boundary_weight: extra weight of boundary pixels. Defaults to 5.
        include_background: if False, channel 0 is excluded (for one-hot targets with a background channel).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (shape ``(B, C)``).

    Raises:
        ValueError: on an even kernel size, or logits and target of different shapes.
    """

    def __init__(
        self,
        kernel_size: int = 31,
        boundary_weight: float = 5.0,
        include_background: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}.")
        self.kernel_size = int(kernel_size)
        self.boundary_weight = float(boundary_weight)
        self.include_background = include_background

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, H, W)``.
            target: binary masks ``(B, C, H, W)`` (values in [0, 1]).
        """
        if input.shape != target.shape:
            raise ValueError(
                f"StructureLoss needs logits and target of the same shape, got {tuple(input.shape)} and "
                f"{tuple(target.shape)} (one-hot encode multi-class labels first, e.g. AsDiscreted(to_onehot=C))."
            )
        if input.dim() != 4:
            raise ValueError(f"StructureLoss expects (B, C, H, W) tensors, got {input.dim()} dimensions.")
        if not self.include_background:
            if input.shape[1] == 1:
                raise ValueError("include_background=False needs more than one channel.")
            input, target = input[:, 1:], target[:, 1:]
        input = input.float()
        target = target.to(input)
        weight = 1 + self.boundary_weight * torch.abs(box_mean(target, self.kernel_size) - target)
        bce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
        prob = torch.sigmoid(input)
        inter = (prob * target * weight).sum(dim=(2, 3))
        union = ((prob + target) * weight).sum(dim=(2, 3))
        wiou = 1 - (inter + 1) / (union - inter + 1)
        loss = wbce + wiou
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss


class DeepSupervisionStructureLoss(DeepSupervisionLoss):
    """MONAI's :class:`~monai.losses.DeepSupervisionLoss` over TransFuse's stacked head outputs.

    Accepts the training-mode output of :class:`~transfuse_monai.networks.nets.TransFuse` (``(B, N, C, H, W)``,
    heads stacked on dim 1 in the order final, transformer, deepest fusion), a list of ``(B, C, H, W)`` tensors, or a
    single ``(B, C, H, W)`` tensor (eval-mode output, plain loss). For multi-class (softmax) tasks or Dice + CE, see
    :class:`~transfuse_monai.losses.TransFuseLoss`, which equals this loss for ``loss="structure"`` and
    ``activation="sigmoid"``.

    Args:
        weights: weight of each head. Defaults to TransFuse's ``(0.5, 0.3, 0.2)``.
        loss: the per-head loss. Defaults to :class:`StructureLoss` with its default arguments.
        kwargs: arguments of the default :class:`StructureLoss` (ignored when ``loss`` is given).
    """

    def __init__(self, weights: Sequence[float] = TRANSFUSE_DS_WEIGHTS, loss: _Loss | None = None, **kwargs) -> None:
        if len(weights) == 0 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be non-empty and non-negative, got {list(weights)}.")
        super().__init__(loss if loss is not None else StructureLoss(**kwargs), weights=[float(w) for w in weights])

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = unstack_heads(input, len(self.weights))
        return super().forward(input, target)


def unstack_heads(input: torch.Tensor, num_weights: int) -> list[torch.Tensor]:
    """Split deep-supervision outputs stacked on dim 1 (``(B, N, C, *spatial)``) into a list of ``N`` tensors.

    Args:
        input: the stacked head outputs.
        num_weights: the number of deep-supervision weights, which must equal ``N``.

    Raises:
        ValueError: ``N`` differs from ``num_weights``.
    """
    if input.shape[1] != num_weights:
        raise ValueError(f"Got {input.shape[1]} stacked head outputs but {num_weights} deep-supervision weights.")
    return list(torch.unbind(input, dim=1))
