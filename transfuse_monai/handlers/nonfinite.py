# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Stop a training whose loss became NaN or infinite, before the optimiser step spreads it into the weights."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["StopOnNonFiniteLoss"]


class StopOnNonFiniteLoss:
    """Stop training with a clear error as soon as the loss is NaN or infinite.

    Ignite's ``TerminateOnNan`` ends the run as if it had completed (so a checkpoint handler's final save would write
    the diverged model) and only after the optimiser step; this handler checks the loss on MONAI's
    ``IterationEvents.LOSS_COMPLETED`` (fired by :class:`~monai.engines.SupervisedTrainer` between the loss and the
    backward pass; ``ITERATION_COMPLETED`` on other engines), so the weights never receive a NaN/Inf update, and raises
    ``FloatingPointError`` naming the epoch, the iteration, the loss value and the usual remedies. The run fails
    (non-zero exit status of ``python -m monai.bundle run``), and
    :class:`~transfuse_monai.handlers.ResumableCheckpoint` writes no checkpoint for it: the checkpoints of the last
    good epochs stay as they are, ready to resume from with a lower learning rate.

    Args:
        output_transform: maps ``engine.state.output`` to the loss (``None``: its ``"loss"`` entry).
    """

    def __init__(self, output_transform: Callable | None = None) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        event = IterationEvents.LOSS_COMPLETED
        engine.add_event_handler(event if engine.has_registered_events(event) else Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[Keys.LOSS] if self.output_transform is None else self.output_transform(output)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(loss)
        if bool(torch.isfinite(loss).all()):
            return
        value = loss.item() if loss.numel() == 1 else loss.flatten().tolist()
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        raise FloatingPointError(
            f"Training stopped: the loss is {value} at epoch {state.epoch}, iteration {state.iteration} "
            f"({in_epoch} of the epoch); nothing of this iteration reached the weights or the checkpoints. Lower the "
            "learning rate (learning_rate), enable or tighten gradient clipping (grad_clip_norm), or check the "
            "inputs for NaN/Inf values (images, labels, intensity normalisation); then resume from the last "
            "checkpoint (resume_ckpt) or restart."
        )
