# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Trainers of ``python -m benchmarks nnunet``: nnU-Net's U-Net and TransFuse, each trained for the same wall-clock
budget. nnU-Net imports this file by name from ``nnUNet_extTrainer`` (the benchmark puts this folder there, after the
package's trainers folder).

:class:`WallClockBudget` replaces nnU-Net's epoch count by a budget in seconds (``NNUNET_BUDGET_SECONDS``): epochs
of ``NNUNET_BUDGET_ITERATIONS`` iterations (default 50, validation a fifth of it) run until the budget is spent (the
last epoch stops at the budget, mid-epoch), and nnU-Net's polynomial learning-rate decay,
``lr = lr0 * (1 - t / budget) ** 0.9``, follows the elapsed time ``t`` (updated before every iteration) instead of
the epoch, so both networks get a whole schedule, ending near zero, within the same time. The validation iterations
of each epoch count in the budget; the final validation and prediction do not. Everything else
is the parent trainer's (its network, loss, optimiser, augmentation, checkpoints and final validation).
"""

from __future__ import annotations

import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from transfuse_monai.nnunet.trainer import nnUNetTrainerTransFuse

__all__ = ["WallClockBudget", "nnUNetTrainer_budget", "nnUNetTrainerTransFuse_budget"]


class _TimePolyLR:
    """nnU-Net's poly decay over wall-clock time: ``step()`` sets ``lr0 * (1 - elapsed / budget) ** 0.9``."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, budget: float) -> None:
        self.optimizer, self.initial_lr, self.budget = optimizer, initial_lr, budget
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, current_step=None) -> None:
        fraction = min(self.elapsed() / self.budget, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * (1.0 - fraction) ** 0.9


class WallClockBudget:
    """Mixin before an nnU-Net trainer: train for ``NNUNET_BUDGET_SECONDS`` seconds (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if "NNUNET_BUDGET_SECONDS" not in os.environ:
            raise ValueError(f"{type(self).__name__} trains for NNUNET_BUDGET_SECONDS seconds: set it.")
        self.budget_seconds = float(os.environ["NNUNET_BUDGET_SECONDS"])
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_BUDGET_ITERATIONS", 50))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.num_epochs = 10 ** 6  # the budget ends the training

    def run_training(self):
        self.on_train_start()
        self.lr_scheduler = _TimePolyLR(self.optimizer, self.initial_lr, self.budget_seconds)
        self.print_to_log_file(f"wall-clock budget: {self.budget_seconds:.0f} s, epochs of "
                               f"{self.num_iterations_per_epoch} iterations, batch size {self.batch_size}")
        iterations = 0
        while self.lr_scheduler.elapsed() < self.budget_seconds:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []  # the last epoch stops where the budget ends
            while len(outputs) < self.num_iterations_per_epoch and self.lr_scheduler.elapsed() < self.budget_seconds:
                self.lr_scheduler.step()
                outputs.append(self.train_step(next(self.dataloader_train)))
            iterations += len(outputs)
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.print_to_log_file(f"budget spent: {self.current_epoch} epochs, {iterations} iterations in "
                               f"{self.lr_scheduler.elapsed():.0f} s")
        self.num_epochs = self.current_epoch
        self.on_train_end()


class nnUNetTrainer_budget(WallClockBudget, nnUNetTrainer):
    """nnU-Net's default trainer and U-Net, for a wall-clock budget."""


class nnUNetTrainerTransFuse_budget(WallClockBudget, nnUNetTrainerTransFuse):
    """TransFuse under nnU-Net, for a wall-clock budget."""
