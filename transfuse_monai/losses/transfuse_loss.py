# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Deep-supervision loss of TransFuse for every segmentation task: binary (sigmoid) or multi-class (softmax), with
the paper's structure loss or MONAI's Dice + cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.utils import one_hot

from .structure_loss import TRANSFUSE_DS_WEIGHTS, StructureLoss, unstack_heads

__all__ = ["TransFuseLoss", "LOSS_NAMES", "ACTIVATIONS"]

#: Per-head losses of :class:`TransFuseLoss`.
LOSS_NAMES: tuple[str, ...] = ("structure", "dicece")
#: Output activations of a segmentation task.
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax")

# DiceCELoss arguments that TransFuseLoss sets itself from ``activation`` and ``include_background``
_RESERVED_DICECE_ARGS = ("sigmoid", "softmax", "other_act", "to_onehot_y", "include_background")


class TransFuseLoss(DeepSupervisionLoss):
    """Weighted sum of a per-head loss over TransFuse's deep-supervision outputs, for binary and multi-class tasks.

    The input is the training-mode output of :class:`~transfuse_monai.networks.nets.TransFuse`, logits stacked as
    ``(B, N, C, H, W)`` (heads in the order final, transformer, deepest fusion; weighted by ``weights``), a list of
    ``N`` tensors ``(B, C, H, W)``, or a single ``(B, C, H, W)`` tensor (eval-mode output: the plain per-head loss).
    The label is converted once and shared by all heads:

    - ``activation="sigmoid"``: ``C`` independent binary problems; the label holds ``C`` binary masks
      ``(B, C, H, W)`` (a binary task: ``C = 1``). With ``loss="structure"`` this is exactly
      :class:`DeepSupervisionStructureLoss`.
    - ``activation="softmax"``: ``C = K`` mutually exclusive classes including the background (class 0); the label is
      a class-index map ``(B, 1, H, W)`` with values ``0..K-1`` or its one-hot encoding ``(B, K, H, W)`` (both give
      the same loss: index maps are one-hot encoded here).

    Per-head losses (``loss``):

    - ``"dicece"``: MONAI's :class:`~monai.losses.DiceCELoss`, with ``softmax=True`` (cross-entropy over the ``K``
      classes) or ``sigmoid=True`` (binary cross-entropy for one channel).
    - ``"structure"``: the paper's :class:`StructureLoss` (boundary-weighted BCE + weighted IoU), each channel a
      binary problem on its own logit. For softmax tasks this is the **per-class structure loss on the logits** of
      the one-hot label, as the paper applies it per class: the softmax is not applied inside the loss, and each
      class logit learns a one-versus-rest map whose argmax gives the prediction.

    Args:
        loss: ``"structure"`` (default) or ``"dicece"``.
        activation: ``"sigmoid"`` (default) or ``"softmax"``, the task's output activation.
        num_classes: the expected number of output channels ``C`` (``K`` including the background for softmax);
            checked against the logits. ``None`` accepts what the network gives.
        weights: weight of each head. Defaults to TransFuse's ``(0.5, 0.3, 0.2)``.
        include_background: whether channel 0 counts in the loss. For softmax tasks channel 0 is the background;
            for sigmoid tasks it is the first (foreground) output, so ``False`` needs ``C > 1``. Defaults to True.
        loss_kwargs: further arguments of the per-head loss: :class:`StructureLoss` (``kernel_size``,
            ``boundary_weight``, ``reduction``) or :class:`~monai.losses.DiceCELoss` (e.g. ``lambda_dice``,
            ``lambda_ce``, ``smooth_nr``, ``batch``, ``weight``); the activation and one-hot options are set here.

    Raises:
        ValueError: an unknown ``loss`` or ``activation``, negative or no ``weights``, ``num_classes < 2`` with
            softmax, or a ``loss_kwargs`` entry that :class:`TransFuseLoss` sets itself.
        TypeError: a ``loss_kwargs`` entry that the per-head loss does not accept.

    Example:
        >>> import torch
        >>> loss = TransFuseLoss("dicece", activation="softmax", num_classes=3)
        >>> heads = torch.randn(2, 3, 3, 32, 32)  # TransFuse training output: (B, heads, classes, H, W)
        >>> label = torch.randint(0, 3, (2, 1, 32, 32))  # class-index map
        >>> loss(heads, label).shape
        torch.Size([])
    """

    def __init__(
        self,
        loss: str = "structure",
        activation: str = "sigmoid",
        num_classes: int | None = None,
        weights: Sequence[float] = TRANSFUSE_DS_WEIGHTS,
        include_background: bool = True,
        **loss_kwargs,
    ) -> None:
        loss_name, activation = str(loss).lower(), str(activation).lower()
        if loss_name not in LOSS_NAMES:
            raise ValueError(f"Unknown loss '{loss}'; choose one of {list(LOSS_NAMES)}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation '{activation}'; choose one of {list(ACTIVATIONS)}.")
        if len(weights) == 0 or any(float(w) < 0 for w in weights):
            raise ValueError(f"weights must be non-empty and non-negative, got {list(weights)}.")
        if num_classes is not None:
            if int(num_classes) < 1:
                raise ValueError(f"num_classes must be positive, got {num_classes}.")
            if activation == "softmax" and int(num_classes) < 2:
                raise ValueError(
                    f"A softmax task needs num_classes >= 2 (background included), got {num_classes}; "
                    "use activation='sigmoid' for a single foreground channel."
                )
        head_loss: _Loss
        if loss_name == "structure":
            head_loss = StructureLoss(include_background=include_background, **loss_kwargs)
        else:
            reserved = sorted(set(loss_kwargs) & set(_RESERVED_DICECE_ARGS))
            if reserved:
                raise ValueError(
                    f"TransFuseLoss sets {reserved} of DiceCELoss itself (from activation='{activation}' and "
                    "include_background); remove them from the arguments."
                )
            head_loss = DiceCELoss(
                include_background=include_background,
                sigmoid=activation == "sigmoid",
                softmax=activation == "softmax",
                **loss_kwargs,
            )
        super().__init__(head_loss, weights=[float(w) for w in weights])
        self.loss_name = loss_name
        self.activation = activation
        self.num_classes = None if num_classes is None else int(num_classes)
        self.include_background = bool(include_background)

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """
        Args:
            input: logits, ``(B, N, C, H, W)`` stacked heads, a list of ``N`` tensors ``(B, C, H, W)``, or one
                ``(B, C, H, W)`` tensor.
            target: the label, see the class description.

        Returns:
            the weighted sum of the per-head losses (a scalar with the default reductions).

        Raises:
            ValueError: on a number of heads that differs from the number of weights, heads of different shapes,
                ``C`` different from ``num_classes``, a label whose channel count fits neither convention or
                whose values are outside ``{0, 1}`` (masks, one-hot) or ``0..C-1`` (class-index maps).
        """
        if input is None:
            raise ValueError("TransFuseLoss got no network output (input is None).")
        if not isinstance(target, torch.Tensor):
            target = torch.as_tensor(target)
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = unstack_heads(input, len(self.weights or ()))
        heads = list(input) if isinstance(input, (list, tuple)) else [input]
        if len(heads) == 0:
            raise ValueError("TransFuseLoss got an empty list of head outputs.")
        if len(heads) > 1 and len(heads) != len(self.weights or ()):
            raise ValueError(f"Got {len(heads)} head outputs but {len(self.weights or ())} deep-supervision weights.")
        shape = heads[0].shape
        if any(h.shape != shape for h in heads[1:]):
            raise ValueError(f"Head outputs differ in shape: {[tuple(h.shape) for h in heads]}.")
        target = self.prepare_target(shape, target)
        if isinstance(input, torch.Tensor):
            return super().forward(input, target)
        return super().forward(heads, target)

    def prepare_target(self, logits_shape: Sequence[int], target: torch.Tensor) -> torch.Tensor:
        """Check the logits' channel count and the label against the task, and return the label as ``C`` float
        channels (one-hot for softmax).

        Args:
            logits_shape: shape ``(B, C, *spatial)`` of one head's logits.
            target: the label.

        Raises:
            ValueError: see :meth:`forward`.
        """
        logits_shape = tuple(logits_shape)
        num_channels = logits_shape[1] if len(logits_shape) > 1 else 0
        if len(logits_shape) < 3:
            raise ValueError(f"TransFuseLoss expects logits (B, C, *spatial), got shape {logits_shape}.")
        if self.num_classes is not None and num_channels != self.num_classes:
            raise ValueError(
                f"The network gives {num_channels} output channels but the loss expects num_classes="
                f"{self.num_classes}; set the network's out_channels to the number of classes"
                + (" (background included)." if self.activation == "softmax" else ".")
            )
        if target.dim() != len(logits_shape) or target.shape[0] != logits_shape[0]:
            raise ValueError(
                f"Label shape {tuple(target.shape)} does not fit logits {logits_shape}: expected (B, 1, *spatial) or "
                f"(B, C, *spatial) with the same batch size."
            )
        if tuple(target.shape[2:]) != logits_shape[2:]:
            raise ValueError(
                f"Label spatial shape {tuple(target.shape[2:])} differs from the logits' {logits_shape[2:]}."
            )
        if not self.include_background and num_channels == 1:
            raise ValueError("include_background=False needs more than one output channel.")
        target = target.float()
        label_channels = target.shape[1]
        if self.activation == "sigmoid":
            if label_channels != num_channels:
                raise ValueError(
                    f"A sigmoid task needs one binary mask per output channel: label with {num_channels} channel(s), "
                    f"got {label_channels}. For mutually exclusive classes use activation='softmax'."
                )
            _check_range(target, 0.0, 1.0, "Sigmoid-task label (binary masks)")
            return target
        if num_channels < 2:
            raise ValueError(
                f"A softmax task needs at least 2 output channels (background included), got {num_channels}."
            )
        if label_channels == 1:  # class-index map
            _check_range(target, 0.0, num_channels - 1, f"Class-index label of a {num_channels}-class task")
            if not torch.equal(target, torch.round(target)):
                raise ValueError(
                    "Class-index label has non-integer values; resample labels with nearest interpolation."
                )
            return one_hot(target.long(), num_classes=num_channels, dtype=torch.float32, dim=1)
        if label_channels == num_channels:  # one-hot (or soft) label
            _check_range(target, 0.0, 1.0, "One-hot label")
            if not torch.allclose(target.sum(dim=1), torch.ones_like(target[:, 0]), atol=1e-3):
                raise ValueError("One-hot label channels do not sum to 1 at every pixel.")
            return target
        raise ValueError(
            f"Label with {label_channels} channels fits neither a class-index map (1 channel) nor a one-hot label "
            f"({num_channels} channels, as the logits)."
        )


def _check_range(target: torch.Tensor, low: float, high: float, what: str) -> None:
    lo, hi = float(target.min()), float(target.max())
    if not (low <= lo and hi <= high):
        raise ValueError(f"{what} must have values in [{low:g}, {high:g}], got range [{lo:g}, {hi:g}].")
