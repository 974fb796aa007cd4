# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Gradient-norm clipping for MONAI trainers."""

from __future__ import annotations

import torch

from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping"]


class GradientClipping:
    """Clip the gradient norm of a MONAI trainer's network after each backward pass, before the optimiser step.

    It runs on ``IterationEvents.BACKWARD_COMPLETED``, which :class:`~monai.engines.SupervisedTrainer` fires between
    ``loss.backward()`` and ``optimizer.step()``; with AMP the gradients are unscaled first.

    Args:
        max_norm: maximum gradient norm (``torch.nn.utils.clip_grad_norm_``).
        norm_type: type of the norm.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.last_norm: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm, self.norm_type)
        self.last_norm = float(norm)
