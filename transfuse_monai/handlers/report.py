# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Report of an inference run over a folder: what was segmented, what was skipped and why."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from monai.utils import min_version, optional_import

from transfuse_monai.data.checks import InferenceInputs

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["InferenceReport"]


def _filenames(items, image_key: str) -> list[str]:
    """Source file names of a decollated batch (``list`` of dicts) or of a collated one (dict of batched values)."""
    if isinstance(items, Mapping):
        items = [items]
    names: list[str] = []
    for item in items if isinstance(items, Sequence) else []:
        image = item.get(image_key) if isinstance(item, Mapping) else None
        meta = getattr(image, "meta", None) or (item.get(f"{image_key}_meta_dict") if isinstance(item, Mapping) else None)
        name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        if isinstance(name, (list, tuple)):
            names += [os.fspath(n) for n in name]
        elif name is not None:
            names.append(os.fspath(name))
    return names


class InferenceReport:
    """Write ``<output_dir>/inference_report.json`` of an inference run when it ends (completed or interrupted by an
    exception): the inputs segmented, the inputs skipped as unreadable with their reason, the inputs skipped because
    their output existed (:class:`~transfuse_monai.data.InferenceInputs`); the skipped files are also logged.

    The inputs segmented are read from each iteration's batch (``filename_or_obj`` of the images), so an interrupted
    run reports what it finished.

    Example (a bundle's ``inference.json``)::

        "inference_report": {"_target_": "transfuse_monai.handlers.InferenceReport", "inputs": "@inference_inputs"},
        "run": ["$@evaluator.run() if @inference_inputs.items else @inference_report.write()"]

    Args:
        inputs: the :class:`~transfuse_monai.data.InferenceInputs` the run's dataset is built from.
        image_key: key of the images in the batches.
    """

    def __init__(self, inputs: InferenceInputs, image_key: str = "image") -> None:
        self.inputs = inputs
        self.image_key = image_key
        self.processed: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)

    def _started(self, engine: Engine) -> None:
        self.processed = []

    def _iteration_completed(self, engine: Engine) -> None:
        self.processed += _filenames(engine.state.batch, self.image_key)

    def _completed(self, engine: Engine) -> None:
        self.write()

    def _exception_raised(self, engine: Engine, err: Exception) -> None:
        self.write()
        raise err

    def write(self):
        """Write the report (with the inputs processed so far) and return its path."""
        return self.inputs.write_report(self.processed)
