# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Periodic validation that also validates the end of a training, so that the best-model file always exists."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

from transfuse_monai.handlers.exception_hooks import add_exception_hook
from transfuse_monai.utils.distributed import rank_and_world_size

__all__ = ["FinalValidationHandler"]


class FinalValidationHandler(ValidationHandler):
    """MONAI's :class:`~monai.handlers.ValidationHandler` that also validates once when training ends, if the
    network has been trained since its last validation.

    The bundles' best model (``model.pt``) is written by the validator (a key-metric checkpoint saver). With
    validation every ``interval`` epochs, a training whose last epoch is not a multiple of ``interval`` (``--epochs
    1`` with validation every 5 epochs, an early stop, Ctrl-C) would otherwise end without a validated model, or
    without one of its last epochs. This handler validates (``validator.run(epoch)``) once more when training ends:

    - at ``COMPLETED``: the last epoch, or the stop requested with ``engine.terminate()`` (early stopping);
    - on ``KeyboardInterrupt`` (Ctrl-C), once at least one epoch of this run has completed: the network as it was
      interrupted, the state ``checkpoint_last.pt`` holds too
      (:class:`~transfuse_monai.handlers.ResumableCheckpoint`, whose hook runs first when it is attached first).
      Not in a distributed run, where the ranks stop at different points and a validation would wait for the
      others forever; nor for any other exception (a diverged or failed training).

    Nothing runs twice for the same state: no final validation when the last iteration was validated (the last
    epoch was a multiple of ``interval``, or training stopped right after a validation), none after an interruption
    during a validation, nor when nothing was trained in the run (an interruption before the first iteration ended).
    A final validation is logged with its reason. ``engine.terminate(skip_completed=True)`` skips ``COMPLETED``, and
    with it the final validation.

    Example (a bundle's ``train.json``; in place of ``ValidationHandler``)::

        {"_target_": "transfuse_monai.handlers.FinalValidationHandler", "validator": "@validate#evaluator",
         "epoch_level": true, "interval": "@val_interval"}

    Args:
        interval: validate every ``interval`` epochs (``epoch_level``) or iterations.
        validator: the evaluator to run; if None, call ``set_validator()`` before training.
        epoch_level: validate every ``interval`` epochs (``True``) or iterations (``False``).
        exec_at_start: also validate before training starts.
        on_interrupt: validate when a ``KeyboardInterrupt`` stops the training after at least one completed epoch.

    Raises:
        TypeError: ``validator`` is not a MONAI ``Evaluator``.
    """

    def __init__(
        self,
        interval: int,
        validator: Evaluator | None = None,
        epoch_level: bool = True,
        exec_at_start: bool = False,
        on_interrupt: bool = True,
    ) -> None:
        super().__init__(interval, validator=validator, epoch_level=epoch_level, exec_at_start=exec_at_start)
        self.on_interrupt = bool(on_interrupt)
        self.logger = logging.getLogger(__name__)
        self._trained = False  # the network changed since the last validation (or the start of the run)
        self._terminated = False
        self._epochs_completed = 0  # in this run
        self._validated_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        # before the periodic validation, so that it sees this iteration counted
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.TERMINATE, self._terminate)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        add_exception_hook(engine, self._exception_raised)

    def __call__(self, engine: Engine) -> None:
        # marked before running: a validation interrupted by Ctrl-C is not started again by the final one
        self._trained = False
        self._validated_epoch = engine.state.epoch
        super().__call__(engine)

    def _started(self, engine: Engine) -> None:
        self._trained = self._terminated = False
        self._epochs_completed = 0
        self._validated_epoch = None

    def _iteration_completed(self, engine: Engine) -> None:
        self._trained = True

    def _epoch_completed(self, engine: Engine) -> None:
        self._epochs_completed += 1

    def _terminate(self, engine: Engine) -> None:
        self._terminated = True

    def _last_validation(self) -> str:
        unit = ("epoch" if self.epoch_level else "iteration") + ("s" if self.interval > 1 else "")
        every = f"every {self.interval} {unit}"
        last = f"epoch {self._validated_epoch}" if self._validated_epoch is not None else "none yet in this run"
        return f"validation runs {every}, the last one: {last}"

    def _completed(self, engine: Engine) -> None:
        if not self._trained:
            return
        how = "was stopped (engine.terminate(), e.g. early stopping)" if self._terminated else "completed"
        self.logger.info(
            f"Final validation: training {how} at epoch {engine.state.epoch}, iteration {engine.state.iteration}, "
            f"which was not validated ({self._last_validation()})."
        )
        self(engine)

    def _exception_raised(self, engine: Engine, e: BaseException) -> None:
        if not isinstance(e, KeyboardInterrupt) or not self.on_interrupt or not self._trained:
            return
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        if self._epochs_completed == 0:
            self.logger.info(f"No final validation: training was interrupted at {where}, before its first epoch ended.")
            return
        if rank_and_world_size()[1] > 1:
            self.logger.warning(
                f"No final validation: a distributed training was interrupted at {where} ({self._last_validation()});"
                " its ranks may have stopped at different points. Its last state is in checkpoint_last.pt: resume "
                "with --resume_ckpt auto, or evaluate it with --ckpt_path."
            )
            return
        self.logger.info(
            f"Final validation: training was interrupted (KeyboardInterrupt) at {where}, which was not validated "
            f"({self._last_validation()}); press Ctrl-C again to skip it."
        )
        self(engine)
