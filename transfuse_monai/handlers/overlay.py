# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Evaluator handler writing PNG overlays of ground-truth and predicted contours on the image, to look at."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai.utils import CommonKeys as Keys

from transfuse_monai.handlers.metrics_report import item_name
from transfuse_monai.metrics.segmentation import SegmentationMetrics
from transfuse_monai.utils import atomic_path, atomic_write_json
from transfuse_monai.utils.distributed import gather_per_rank, interleave_ranks, is_main_process, rank_and_world_size

__all__ = ["OverlayWriter", "OVERLAY_COLORS"]

#: ``(ground truth, prediction)`` contour colours of classes 1, 2, ...: a strong colour and a light shade of the
#: same hue (matplotlib's "tab20" pairs, grey left out), repeated for more classes.
OVERLAY_COLORS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((44, 160, 44), (152, 223, 138)),  # green
    ((31, 119, 180), (174, 199, 232)),  # blue
    ((255, 127, 14), (255, 187, 120)),  # orange
    ((214, 39, 40), (255, 152, 150)),  # red
    ((148, 103, 189), (197, 176, 213)),  # purple
    ((23, 190, 207), (158, 218, 229)),  # cyan
    ((227, 119, 194), (247, 182, 210)),  # pink
    ((188, 189, 34), (219, 219, 141)),  # olive
    ((140, 86, 75), (196, 156, 148)),  # brown
)


def _plain(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x))


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` uint8: RGB when ``C == 3``, otherwise the first channel in grey; rescaled to
    0..255 with the image's own minimum and maximum."""
    x = image.float()
    x = x[:3] if x.shape[0] == 3 else x[:1].expand(3, *x.shape[1:])
    x = torch.nan_to_num(x)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) * 255.0 if hi > lo else torch.zeros_like(x)
    return np.ascontiguousarray(x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


class OverlayWriter:
    """Evaluator handler writing, for the first ``max_images`` items of each run, a PNG of the image with the
    ground-truth and predicted contours of every foreground class.

    The picture is at the prediction's resolution (the image is resized bilinearly, the label with nearest
    neighbours, when they differ): the image's first channel in grey, or its three channels as RGB, rescaled to
    0..255 per image (no de-normalisation needed). Contours are the masks' inner boundaries
    (:func:`skimage.segmentation.find_boundaries`, ``mode="inner"``), one pixel wide; class ``c`` is drawn in
    ``colors[c - 1]``: the ground truth in the strong colour, then the prediction on top in the light shade of the
    same hue (so a ground-truth colour that remains visible marks a boundary the prediction missed). For 3D items
    ``(C, H, W, D)`` the slice (last axis) with the most ground-truth foreground is shown (the most predicted
    foreground when the label is empty or absent). Files are named after the image stem (the ``name_key`` entry,
    else the image's ``filename_or_obj``): ``<prefix><stem>.png``, or ``<prefix><stem>_slice<k>.png`` for 3D; a
    ``<prefix>legend.json`` lists the colours. Every file is written atomically.

    In a distributed run (``torchrun``, a non-shuffled :class:`~monai.data.DistributedSampler` giving rank ``r`` the
    items ``r, r + world_size, ...``) each rank draws its first ``ceil(max_images / world_size)`` items as PNG bytes
    in memory; when the run completes they are gathered and rank 0 writes the first ``max_images`` of them in the
    dataset order: the same files as a single-process run. Every rank must attach the handler (the gather is a
    collective operation).

    Predictions and labels follow :class:`~transfuse_monai.metrics.SegmentationMetrics`: sigmoid probabilities
    ``(K-1, ...)`` thresholded at ``threshold``, softmax probabilities ``(K, ...)`` (argmax) or a class-index map
    ``(1, ...)``; labels a class-index map ``(1, ...)`` (or per-class masks).

    Args:
        output_dir: folder of the PNG files.
        max_images: number of items drawn per run (the first ones).
        activation: ``"sigmoid"`` or ``"softmax"``, the task's output activation.
        class_names: class names, index 0 the background; by default inferred from the prediction's channels
            (required for a softmax class-index prediction).
        image_key: key of the image in the engine output (else the batch).
        pred_key: key of the post-activation prediction in the engine output.
        label_key: key of the label in the engine output (else the batch); items without it get prediction contours
            only.
        threshold: threshold of sigmoid probabilities.
        name_key: batch key holding an item's name.
        prefix: file name prefix.
        colors: ``(ground truth RGB, prediction RGB)`` per foreground class; defaults to :data:`OVERLAY_COLORS`.

    Raises:
        ValueError: ``max_images < 1``, or no colours.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        max_images: int = 8,
        activation: str = "sigmoid",
        class_names: Sequence[str] | None = None,
        image_key: str = Keys.IMAGE,
        pred_key: str = Keys.PRED,
        label_key: str = Keys.LABEL,
        threshold: float = 0.5,
        name_key: str = "name",
        prefix: str = "",
        colors: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
    ) -> None:
        if int(max_images) < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}.")
        colors = OVERLAY_COLORS if colors is None else colors
        if len(colors) == 0:
            raise ValueError("colors needs at least one (ground truth, prediction) pair.")
        self.output_dir = Path(output_dir)
        self.max_images = int(max_images)
        self.activation = activation
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self.image_key = image_key
        self.pred_key = pred_key
        self.label_key = label_key
        self.threshold = float(threshold)
        self.name_key = name_key
        self.prefix = prefix
        self.colors = tuple((tuple(int(v) for v in gt), tuple(int(v) for v in pr)) for gt, pr in colors)
        self._masks = self._masker(self.class_names) if self.class_names is not None else None
        self.written: list[Path] = []
        self._pending: list[tuple[str, int | None, bytes]] = []  # distributed: (name, slice, PNG) drawn, not written

    def _masker(self, class_names: Sequence[str]) -> SegmentationMetrics:
        # reuses the metric's validated conversion of predictions and labels to per-class masks
        return SegmentationMetrics(class_names, self.activation, metrics=("dice",), threshold=self.threshold)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine=None) -> None:
        self.written = []
        self._pending = []

    def class_color(self, class_index: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(ground truth, prediction)`` colours of foreground class ``class_index`` (1, 2, ...)."""
        return self.colors[(class_index - 1) % len(self.colors)]  # type: ignore[return-value]

    def iteration_completed(self, engine) -> None:
        rank, world_size = rank_and_world_size()
        quota = self.max_images if world_size == 1 else math.ceil(self.max_images / world_size)
        drawn = len(self.written) + len(self._pending)
        if drawn >= quota:
            return
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, Mapping):  # not decollated: a single item
            batch, output = [batch], [output]
        for b, o in zip(batch, output):
            if drawn >= quota:
                return
            image = o.get(self.image_key, b.get(self.image_key))
            if image is None:
                raise KeyError(f"OverlayWriter: no '{self.image_key}' in the engine output or the batch.")
            label = o.get(self.label_key, b.get(self.label_key))
            name = item_name(b, o, self.name_key, self.image_key)
            if name == "?":
                name = f"image_{drawn * world_size + rank:04d}"  # the item's index in the dataset
            if world_size == 1:
                self.written.append(self.write(image, o[self.pred_key], label, name))
            else:
                rgb, slice_index = self.render(image, o[self.pred_key], label)
                self._pending.append((name, slice_index, self._encode(rgb)))
            drawn += 1

    def epoch_completed(self, engine=None) -> None:
        """Distributed run: gather the overlays every rank drew and write the first ``max_images`` on rank 0."""
        if rank_and_world_size()[1] == 1:
            return
        drawn = interleave_ranks(gather_per_rank(self._pending))[: self.max_images]
        self._pending = []
        if is_main_process():
            for name, slice_index, png in drawn:
                self.written.append(self._store(name, slice_index, png))

    def render(self, image: Any, pred: Any, label: Any = None) -> tuple[np.ndarray, int | None]:
        """The overlay of one item as an ``(H, W, 3)`` uint8 array, and the slice index for 3D items (else None).

        Raises:
            ValueError: inputs of unsupported dimensions or inconsistent with the task (see
                :class:`~transfuse_monai.metrics.SegmentationMetrics`).
        """
        pred_t = _plain(pred)
        masker = self._masks
        if masker is None:
            channels = pred_t.shape[0]
            if self.activation == "softmax" and channels == 1:
                raise ValueError("OverlayWriter needs class_names for a class-index (1-channel) softmax prediction.")
            k = channels + 1 if self.activation == "sigmoid" else channels
            masker = self._masker(["background", *(f"class_{i}" for i in range(1, k))])
        pred_masks = masker.one_hot_pred(pred_t)
        spatial = tuple(pred_masks.shape[1:])
        gt_masks = None
        if label is not None:
            gt_masks = masker.one_hot_label(_plain(label))
            if tuple(gt_masks.shape[1:]) != spatial:
                gt_masks = F.interpolate(gt_masks[None].float(), size=spatial, mode="nearest-exact")[0] > 0.5
        img = _plain(image).float()
        if img.dim() != pred_masks.dim():
            raise ValueError(
                f"Image {tuple(img.shape)} and prediction {tuple(pred_t.shape)} must both be channel-first 2D or 3D."
            )
        if tuple(img.shape[1:]) != spatial:
            mode = "bilinear" if len(spatial) == 2 else "trilinear"
            img = F.interpolate(img[None], size=spatial, mode=mode, align_corners=False)[0]
        slice_index = None
        if len(spatial) == 3:
            source = gt_masks if gt_masks is not None and bool(gt_masks[1:].any()) else pred_masks
            per_slice = source[1:].any(dim=0).sum(dim=(0, 1))
            slice_index = int(torch.argmax(per_slice)) if bool(per_slice.any()) else spatial[2] // 2
            img, pred_masks = img[..., slice_index], pred_masks[..., slice_index]
            gt_masks = None if gt_masks is None else gt_masks[..., slice_index]
        rgb = _to_uint8_rgb(img)
        from skimage.segmentation import find_boundaries

        for masks, which in ((gt_masks, 0), (pred_masks, 1)):  # ground truth first, prediction on top
            if masks is None:
                continue
            for c in range(1, masks.shape[0]):
                boundary = find_boundaries(masks[c].numpy(), mode="inner")
                rgb[boundary] = self.class_color(c)[which]
        return rgb, slice_index

    def write(self, image: Any, pred: Any, label: Any, name: str) -> Path:
        """Render one item and write ``<output_dir>/<prefix><name>[_slice<k>].png`` atomically; returns the path."""
        rgb, slice_index = self.render(image, pred, label)
        return self._store(name, slice_index, self._encode(rgb))

    @staticmethod
    def _encode(rgb: np.ndarray) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        return buffer.getvalue()

    def _store(self, name: str, slice_index: int | None, png: bytes) -> Path:
        """Write an encoded overlay under a name not yet taken in this run (and the legend with the first one)."""
        stem = f"{self.prefix}{name}" + (f"_slice{slice_index:03d}" if slice_index is not None else "")
        path = self.output_dir / f"{stem}.png"
        taken = {p.name for p in self.written}
        n = 1
        while path.name in taken:
            path = self.output_dir / f"{stem}_{n}.png"
            n += 1
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(png)
        if not self.written:
            self._write_legend()
        return path

    def _write_legend(self) -> None:
        names = self.class_names or tuple(f"class_{i}" for i in range(len(self.colors) + 1))
        legend = {
            "contours": "ground truth in the first colour, prediction (drawn on top) in the second",
            "classes": {
                names[c]: {"ground_truth": list(self.class_color(c)[0]), "prediction": list(self.class_color(c)[1])}
                for c in range(1, len(names))
            },
        }
        atomic_write_json(self.output_dir / f"{self.prefix}legend.json", legend)
