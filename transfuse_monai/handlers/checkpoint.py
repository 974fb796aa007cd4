# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Resumable training checkpoints (model, optimiser and trainer state) with MONAI's checkpoint handlers."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["ResumableCheckpoint"]


class ResumableCheckpoint:
    """Save, and optionally resume from, the full training state with MONAI's ``CheckpointSaver``/``CheckpointLoader``.

    A config cannot give the trainer to its own handlers (a circular reference), so this handler receives the trainer
    when it is attached and adds it to the state dict. Every ``save_interval`` epochs it writes
    ``<save_dir>/checkpoint_epoch=N.pt`` (keeping the last ``n_saved``), and ``checkpoint_last.pt`` when training
    ends or fails; with ``resume_from`` it first restores model, optimiser, epoch and iteration from such a file and
    training continues up to the trainer's ``max_epochs``.

    Args:
        save_dir: folder of the checkpoints.
        network: the trained network.
        optimizer: its optimiser.
        resume_from: checkpoint to resume from (``None``: start fresh).
        save_interval: epochs between saves.
        n_saved: how many periodic checkpoints to keep.
        lr_scheduler: optional scheduler whose state is saved and restored too.
        map_location: device of the loaded tensors.
        save: whether this process writes checkpoints (``False`` on all but one rank of a distributed run).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        resume_from: str | os.PathLike | None = None,
        save_interval: int = 1,
        n_saved: int = 1,
        lr_scheduler=None,
        map_location=None,
        save: bool = True,
    ) -> None:
        if resume_from is not None and not Path(resume_from).is_file():
            raise FileNotFoundError(f"Checkpoint to resume from not found: {resume_from}")
        self.save_dir = str(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.resume_from = None if resume_from is None else str(resume_from)
        self.save_interval = int(save_interval)
        self.n_saved = int(n_saved)
        self.lr_scheduler = lr_scheduler
        self.map_location = map_location
        self.save = bool(save)

    def attach(self, engine) -> None:
        state = {"model": self.network, "optimizer": self.optimizer, "trainer": engine}
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler
        if self.resume_from is not None:
            CheckpointLoader(load_path=self.resume_from, load_dict=state, map_location=self.map_location).attach(engine)
        if not self.save:
            return
        CheckpointSaver(
            save_dir=self.save_dir,
            save_dict=state,
            file_prefix="",
            save_interval=self.save_interval,
            n_saved=self.n_saved,
            epoch_level=True,
            save_final=True,
            final_filename="checkpoint_last.pt",
        ).attach(engine)
