# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Multi-scale training iterations for MONAI's :class:`~monai.engines.SupervisedTrainer` (PraNet's schedule)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["MultiScaleIteration", "scaled_size"]


def scaled_size(base_size: Sequence[int], scale: float, multiple: int = 32) -> tuple[int, ...]:
    """``round(base * scale / multiple) * multiple`` per axis (PraNet's rule), at least ``multiple``."""
    return tuple(max(multiple, int(round(s * scale / multiple)) * multiple) for s in base_size)


class MultiScaleIteration:
    """``iteration_update`` of a :class:`~monai.engines.SupervisedTrainer` that trains each batch at several scales.

    PraNet's multi-scale schedule (also used by TransFuse for polyps): every batch is rescaled to each of ``scales``
    times the base size, rounded to a multiple of ``multiple`` (0.75/1/1.25 of 352 give 256/352/448), and each scale is
    one full iteration of the trainer (forward, loss, backward, optimiser step), so one scale per optimiser step.
    ``mode="random"`` instead trains each batch once at a randomly drawn scale (a third of the compute).

    The trainer's own iteration does the work for each scale (AMP, gradient accumulation, events), bracketed by
    ``IterationEvents.INNER_ITERATION_STARTED/COMPLETED``. The engine output is the one of the scale closest to 1,
    with ``loss`` the mean over the scales of this batch (a float, as MONAI's decollated outputs hold it).

    Args:
        scales: scale factors relative to the batch's size.
        multiple: rescaled sizes are rounded to multiples of this (32 keeps every TransFuse stride exact).
        mode: ``"cycle"`` (every scale for every batch, PraNet) or ``"random"`` (one random scale per batch).
        image_key: key of the images in the batch.
        label_key: key of the labels; they are resized bilinearly (soft labels at the new scale, as PraNet does).
        seed: seed of the random scale choice (``mode="random"``).
    """

    def __init__(
        self,
        scales: Sequence[float] = (0.75, 1.0, 1.25),
        multiple: int = 32,
        mode: str = "cycle",
        image_key: str = Keys.IMAGE,
        label_key: str = Keys.LABEL,
        seed: int | None = None,
    ) -> None:
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}.")
        if mode not in ("cycle", "random"):
            raise ValueError(f"mode must be 'cycle' or 'random', got '{mode}'.")
        self.scales = tuple(float(s) for s in scales)
        self.multiple = int(multiple)
        self.mode = mode
        self.image_key = image_key
        self.label_key = label_key
        self._rng = random.Random(seed)

    def _rescale(self, batchdata: dict, scale: float) -> dict:
        image = batchdata[self.image_key]
        size = scaled_size(image.shape[2:], scale, self.multiple)
        if tuple(image.shape[2:]) == size:
            return batchdata
        out = dict(batchdata)
        out[self.image_key] = F.interpolate(torch.as_tensor(image), size=size, mode="bilinear", align_corners=True)
        if self.label_key in batchdata:
            label = torch.as_tensor(batchdata[self.label_key]).float()
            out[self.label_key] = F.interpolate(label, size=size, mode="bilinear", align_corners=True)
        return out

    def __call__(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        scales = self.scales if self.mode == "cycle" else (self._rng.choice(self.scales),)
        kept, losses = None, []
        best = min(scales, key=lambda s: abs(s - 1.0))
        kept_batch = batchdata
        for scale in scales:
            scaled = self._rescale(batchdata, scale)
            # MONAI decollates and post-processes engine.state.batch/output at MODEL_COMPLETED, inside _iteration:
            # the state must hold this scale's batch so that they stay paired
            engine.state.batch = scaled
            engine.fire_event(IterationEvents.INNER_ITERATION_STARTED)
            output = engine._iteration(engine, scaled)
            engine.fire_event(IterationEvents.INNER_ITERATION_COMPLETED)
            first = output[0] if isinstance(output, list) else output
            losses.append(float(torch.as_tensor(first[Keys.LOSS]).detach()))
            if scale == best:
                kept, kept_batch = output, engine.state.batch
        mean_loss = sum(losses) / len(losses)
        if isinstance(kept, list):
            kept = [{**item, Keys.LOSS: mean_loss} for item in kept]
        else:
            kept = {**kept, Keys.LOSS: torch.tensor(mean_loss)}
        engine.state.batch = kept_batch
        engine.state.output = kept
        return kept
