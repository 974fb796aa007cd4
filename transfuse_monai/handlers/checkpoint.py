# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Resumable training checkpoints (model, optimiser, trainer and scheduler state), written atomically."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from transfuse_monai.handlers.exception_hooks import add_exception_hook
from transfuse_monai.utils.io import atomic_path

__all__ = ["AtomicCheckpointSaver", "ResumableCheckpoint", "read_training_checkpoint"]

LAST_NAME = "checkpoint_last.pt"
PERIODIC_PREFIX = "checkpoint_epoch="
_REQUIRED = ("model", "optimizer", "trainer")


def read_training_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = _REQUIRED) -> Mapping:
    """Open a training checkpoint safely and check that it holds the ``required`` entries.

    The file is read with ``torch.load(weights_only=True, mmap=True)``: its pickle is parsed (so a file holding
    arbitrary Python objects is refused before anything in it runs, and a truncated file fails), while the tensor
    data stays memory-mapped, so checking even a large checkpoint is quick.

    Args:
        path: a ``checkpoint_last.pt`` / ``checkpoint_epoch=N.pt`` file written by :class:`ResumableCheckpoint`.
        required: entries the checkpoint must hold.

    Raises:
        ValueError: the file holds Python objects besides tensors and plain containers, is not a readable
            (complete) PyTorch checkpoint, or lacks one of the ``required`` entries.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a refused object: a damaged pickle
            raise ValueError(f"Cannot resume from '{path}': it is not a readable PyTorch checkpoint: {err}") from err
        raise ValueError(
            f"Refusing to resume from '{path}': it holds Python objects besides tensors and plain containers "
            "(torch.load(weights_only=True) refused it, so nothing in it was run). Checkpoints written by "
            "ResumableCheckpoint never do; only resume from files you wrote yourself."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"Cannot resume from '{path}': it is not a readable PyTorch checkpoint (truncated or corrupt?): {err}"
        ) from err
    missing = [k for k in required if not isinstance(content, Mapping) or k not in content]
    if missing:
        found = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"Cannot resume from '{path}': a training checkpoint needs the entries {list(required)}, this file lacks "
            f"{missing} (it holds {found}). Resume from a '{LAST_NAME}' or '{PERIODIC_PREFIX}N.pt' file; to start a "
            "new training from a network's weights, use the bundle's 'init_ckpt' instead."
        )
    return content


class _AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler writing each checkpoint through :func:`~transfuse_monai.utils.io.atomic_path`.

    Ignite's ``Checkpoint`` removes the file a new one supersedes *before* writing the new one; here the removal waits
    until the new file is complete, so a process killed at any moment leaves the previous checkpoints intact and
    never a partial file under a checkpoint's name.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename  # a fixed file name (e.g. ``model.pt``) instead of ignite's generated one
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        with atomic_path(self.dirname / filename) as tmp:
            torch.save(checkpoint, tmp)
        for name in self._superseded:
            if name != filename:
                (self.dirname / name).unlink(missing_ok=True)
        self._superseded = []

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` with every file written atomically.

    MONAI's handler writes through ignite's ``DiskSaver(atomic=False)``, so a process killed while it saves the best
    model (``key_metric_filename``, e.g. ``model.pt``) leaves a truncated file under that name. This subclass takes
    the same arguments and behaves the same, but its final, key-metric and interval checkpoints go through
    :func:`~transfuse_monai.utils.io.atomic_path`: the previous file stays in place until the new one is complete.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=fixed)


def _state_is_finite(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every floating-point tensor of the network's and the optimiser's state is finite."""
    tensors = [t for t in network.state_dict().values() if torch.is_tensor(t) and t.is_floating_point()]
    for values in optimizer.state.values():
        tensors += [t for t in values.values() if torch.is_tensor(t) and t.is_floating_point()]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


class ResumableCheckpoint:
    """Save, and optionally resume from, the full training state: model, optimiser, trainer (epoch and iteration)
    and learning-rate scheduler.

    A config cannot give the trainer to its own handlers (a circular reference), so this handler receives the trainer
    when it is attached and adds it to the state dict. Every ``save_interval`` epochs it writes
    ``<save_dir>/checkpoint_epoch=N.pt`` (keeping the last ``n_saved``), and ``checkpoint_last.pt`` when training
    ends or fails (Ctrl-C included). The periodic save runs after all other end-of-epoch handlers (scheduler steps,
    validation), so a checkpoint holds exactly the state the next epoch starts from.

    Reliability:

    - every file is written to a temporary name and renamed (:func:`~transfuse_monai.utils.io.atomic_path`), and a
      superseded checkpoint is deleted only after its successor is complete: a process killed at any moment, even
      during a save, leaves complete checkpoints only;
    - nothing is saved while the network or optimiser state holds NaN/Inf values, nor when training stops on a
      ``FloatingPointError`` (a diverged training, :class:`~transfuse_monai.handlers.StopOnNonFiniteLoss`): the
      checkpoints of the last good epochs are kept; nor is ``checkpoint_last.pt`` written by a run that failed before
      its first iteration (a failed resume does not overwrite it);
    - the checkpoint to resume from is read with ``torch.load(weights_only=True)`` (here, to check it when the
      handler is created, and by MONAI's ``CheckpointLoader`` when training starts): a file holding arbitrary Python
      objects is refused before anything in it runs.

    Args:
        save_dir: folder of the checkpoints.
        network: the trained network.
        optimizer: its optimiser.
        resume_from: what to resume from: ``None`` starts fresh; a checkpoint file; a folder (its newest readable
            ``checkpoint_last.pt`` / ``checkpoint_epoch=N.pt``, an error if it has none); or ``"auto"``: the newest
            readable checkpoint in ``save_dir`` if there is one, else a fresh start (so one command both starts a
            training and resumes it after an interruption).
        save_interval: epochs between saves.
        n_saved: how many periodic checkpoints to keep.
        lr_scheduler: optional scheduler whose state is saved and restored too.
        map_location: device of the loaded tensors.
        save: whether this process writes checkpoints (``False`` on all but one rank of a distributed run).

    Raises:
        FileNotFoundError: ``resume_from`` is neither ``"auto"``, a file nor a folder.
        ValueError: the checkpoint to resume from is unsafe, unreadable or not a training checkpoint; or a
            ``resume_from`` folder holds no readable checkpoint.
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
        self.save_dir = str(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.save_interval = int(save_interval)
        self.n_saved = int(n_saved)
        self.lr_scheduler = lr_scheduler
        self.map_location = map_location
        self.save = bool(save)
        self.logger = logging.getLogger(__name__)
        self._required = _REQUIRED + (("lr_scheduler",) if lr_scheduler is not None else ())
        self.resume_from = self._resolve_resume(resume_from)
        self._start_iteration: int | None = None
        self._savers_attached = False
        self._periodic: Checkpoint | None = None
        self._last: Checkpoint | None = None

    def _state(self, engine: Engine) -> dict:
        state = {"model": self.network, "optimizer": self.optimizer, "trainer": engine}
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler
        return state

    def _resolve_resume(self, resume_from) -> str | None:
        """The checkpoint file to resume from (``None``: start fresh), checked with :func:`read_training_checkpoint`."""
        if resume_from is None:
            return None
        auto = isinstance(resume_from, str) and resume_from == "auto"
        path = Path(self.save_dir if auto else resume_from)
        if path.is_file():
            read_training_checkpoint(path, self._required)
            return str(path)
        if not path.is_dir():
            if auto:
                return None
            raise FileNotFoundError(f"Checkpoint to resume from not found: {path}")
        candidates = [p for p in path.iterdir() if p.is_file() and _is_training_checkpoint_name(p.name)]
        for candidate in sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True):
            try:
                read_training_checkpoint(candidate, self._required)
            except ValueError as err:
                self.logger.warning(f"Skipping checkpoint {candidate}: {err}")
                continue
            self.logger.info(f"Resuming from the newest readable checkpoint in {path}: {candidate.name}")
            return str(candidate)
        if auto:
            self.logger.info(f"No checkpoint to resume from in {path}: training starts from scratch.")
            return None
        raise ValueError(
            f"Cannot resume from the folder '{path}': it holds no readable training checkpoint "
            f"('{LAST_NAME}' or '{PERIODIC_PREFIX}N.pt'); found {sorted(p.name for p in candidates)}."
        )

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        state = self._state(engine)
        saver = _AtomicDiskSaver(self.save_dir)
        self._periodic = Checkpoint(
            state, saver, filename_prefix="", score_function=lambda e: e.state.epoch, score_name="epoch",
            n_saved=self.n_saved,
        )
        self._last = Checkpoint(state, saver, filename_pattern=LAST_NAME.replace(".pt", ".{ext}"), n_saved=1)
        if self.resume_from is not None:
            CheckpointLoader(load_path=self.resume_from, load_dict=state, map_location=self.map_location).attach(engine)
        engine.add_event_handler(Events.STARTED, self._started)  # after the loader: sees the restored iteration
        if self.save:
            # a hook, not an EXCEPTION_RAISED handler of its own: ignite stops at the first such handler, which
            # re-raises; the hooks of later handlers (a final validation) run after this save
            add_exception_hook(engine, self._exception_raised)

    def _started(self, engine: Engine) -> None:
        self._start_iteration = engine.state.iteration
        if self.save and not self._savers_attached:
            # registered now, after every handler attached with the trainer: the periodic save sees this epoch's
            # scheduler step and validation, and the final one the complete run
            engine.add_event_handler(
                Events.EPOCH_COMPLETED(every=self.save_interval), self._save, self._periodic, "Saved checkpoint: {path}"
            )
            engine.add_event_handler(
                Events.COMPLETED, self._save, self._last, "Train completed, saved final checkpoint: {path}"
            )
            self._savers_attached = True

    def _save(self, engine: Engine, checkpointer: Checkpoint, message: str) -> None:
        if self._start_iteration is None or engine.state.iteration <= self._start_iteration:
            return  # nothing trained in this run: leave the files on disk as they are
        name = LAST_NAME if checkpointer is self._last else f"{PERIODIC_PREFIX}{engine.state.epoch}.pt"
        if not _state_is_finite(self.network, self.optimizer):
            self.logger.error(
                f"Not saving {name}: the network or optimiser state holds NaN/Inf values (epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}); the checkpoints already in {self.save_dir} are kept."
            )
            return
        checkpointer(engine)
        self.logger.info(message.format(path=os.path.join(self.save_dir, name)))

    def _exception_raised(self, engine: Engine, e: BaseException) -> None:
        if isinstance(e, FloatingPointError):  # a diverged training (StopOnNonFiniteLoss): keep the last good files
            self.logger.error(
                f"Training diverged: {LAST_NAME} is not written, the checkpoints in {self.save_dir} are kept."
            )
        else:
            self._save(engine, self._last, "Exception raised, saved the last checkpoint: {path}")


def _is_training_checkpoint_name(name: str) -> bool:
    return name == LAST_NAME or (name.startswith(PERIODIC_PREFIX) and name.endswith(".pt"))
