# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The trained weights that evaluation, inference and export need, checked before any work is done."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["require_weights"]

#: the best model a bundle's training writes into its ``ckpt_dir`` (the validator's key-metric checkpoint)
MODEL_NAME = "model.pt"


def _training_checkpoints(folder: Path) -> list[str]:
    """Names of the training checkpoints in ``folder``: ``checkpoint_epoch=N.pt`` by epoch, then
    ``checkpoint_last.pt``."""
    from transfuse_monai.handlers.checkpoint import LAST_NAME, PERIODIC_PREFIX

    if not folder.is_dir():
        return []
    periodic = re.compile(re.escape(PERIODIC_PREFIX) + r"(\d+)\.pt")
    epochs = sorted((int(m.group(1)), m.group(0)) for p in folder.iterdir() if (m := periodic.fullmatch(p.name)))
    return [name for _, name in epochs] + ([LAST_NAME] if (folder / LAST_NAME).is_file() else [])


def require_weights(
    path: str | os.PathLike,
    bundle_root: str | os.PathLike | None = None,
    file_option: str = "--ckpt_path",
    dir_option: str | None = "--ckpt_dir",
) -> str:
    """Check that the weights file ``path`` exists, and return it.

    Evaluation and inference call it first (the first step of the bundles' ``run``, when their checkpoint loader is
    enabled), and so does ``python -m transfuse_monai.export``: missing weights stop the run with one message before
    any data is read or generated, not with a stack trace from the checkpoint loader once the data is prepared. The
    message names the path and the ways out: train the bundle first (its validation writes ``model.pt``, at the
    latest when training ends), give the weights' location with ``dir_option`` / ``file_option``, or use a training
    checkpoint (``checkpoint_last.pt``, ``checkpoint_epoch=N.pt``) that the folder holds, named in the message.

    In ``run``, not in ``initialize``: a workflow is initialised without weights by consumers that bring their own
    (MONAI FL disables the checkpoint loaders after a first ``initialize()``) or only check its properties
    (``initialize()`` then ``check_properties()``). MONAI Label and MONAI Deploy read single ids of
    ``inference.json`` and run neither.

    Example (a bundle's ``inference.json``, where ``handlers#0`` is the ``CheckpointLoader``: disabled by
    ``init_ckpt`` or by ``inference_onnx.json``, it requires nothing; its ``_disabled_`` is read rather than the
    loader built, which would build the network and, through it, the datalists)::

        "run": [
            "$@handlers#0#_disabled_ or transfuse_monai.bundle.require_weights(@ckpt_path, @bundle_root)",
            "$@evaluator.run() if @inference_inputs.items else @inference_report.write()"
        ]

    Args:
        path: the weights file, e.g. ``<ckpt_dir>/model.pt``.
        bundle_root: the bundle folder, to name its training command in the message.
        file_option: the command-line option that gives another weights file.
        dir_option: the command-line option that gives another folder holding ``model.pt``; ``None`` if there is
            none.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    path = Path(path)
    if path.is_file():
        return str(path)
    folder = path if path.is_dir() else path.parent
    config = Path(bundle_root) / "configs" / "train.json" if bundle_root is not None else "<bundle>/configs/train.json"
    train = f"python -m monai.bundle run training --config_file {config}"
    if dir_option and (bundle_root is None or folder.resolve() != (Path(bundle_root) / "models").resolve()):
        train += f" {dir_option} {folder}"
    elsewhere = f"{dir_option} DIR (a folder holding {MODEL_NAME}) or {file_option} FILE" if dir_option else (
        f"{file_option} FILE")
    ways = [
        f"train the bundle first: {train} (training writes {MODEL_NAME} when it validates, at the latest when it ends)",
        f"use weights from elsewhere: {elsewhere}",
    ]
    found = _training_checkpoints(folder)
    if found:
        ways.append(
            f"{folder} holds the training checkpoint(s) {', '.join(found)}: {file_option} {folder / found[-1]} "
            "uses the network of the last one"
        )
    problem = "is a folder, not a weights file" if path.is_dir() else "does not exist"
    listed = "\n".join(f"  - {way}" for way in ways)
    raise FileNotFoundError(f"No trained weights: '{path}' {problem}. Ways out:\n{listed}")
