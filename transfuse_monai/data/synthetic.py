"""Drawing primitives of the generated samples that every task module writes in its own layout.

The generated images are small RGB pictures with a smooth textured background and one or more elliptical
"lesions" of a clearly different colour, with binary 0/255 masks. They serve tests, demo runs of the bundles and
tutorials: a few iterations of training are enough for a network to improve its Dice score on them. Each task module
of :mod:`transfuse_monai.tasks` (``make_sample``) chooses colours, sizes and the folder layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["resolve_sizes", "draw_blob_sample", "save_image_pair"]

PathLike = str | os.PathLike
SizeSpec = tuple[int, int] | Sequence[tuple[int, int]] | None


def _is_size(value: object) -> bool:
    """Return ``True`` if ``value`` looks like a single ``(height, width)`` pair."""
    return isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)


def resolve_sizes(spec: SizeSpec, default: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Expand a size spec (``None``, one ``(h, w)`` or a list of them, cycled) into ``n`` sizes."""
    if spec is None:
        sizes = [tuple(default)]
    elif _is_size(spec):
        sizes = [tuple(spec)]
    else:
        sizes = [tuple(s) for s in spec]
        if not sizes or not all(_is_size(s) for s in sizes):
            raise ValueError(f"Invalid size specification: {spec!r}, expected (height, width) or a list of them.")
    out = [(int(sizes[i % len(sizes)][0]), int(sizes[i % len(sizes)][1])) for i in range(n)]
    for h, w in out:
        if h < 8 or w < 8:
            raise ValueError(f"Synthetic images must be at least 8x8 pixels, got (height, width)=({h}, {w}).")
    return out


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int = 8) -> np.ndarray:
    """Low-frequency RGB noise in ``[-1, 1]`` of shape ``(height, width, 3)``."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.uniform(0.0, 255.0, size=(gh, gw, 3)).astype(np.uint8)
    up = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return up / 127.5 - 1.0


def draw_blob_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    background: tuple[int, int, int],
    lesion: tuple[int, int, int],
    n_lesions: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one textured image with ``n_lesions`` ellipses and return ``(rgb uint8, mask uint8 0/255)``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.asarray(background, dtype=np.float32) + rng.uniform(-15, 15, size=3)
    img = bg + 25.0 * _smooth_noise(rng, height, width) + rng.normal(0.0, 6.0, size=(height, width, 3))

    mask = np.zeros((height, width), dtype=bool)
    short = min(height, width)
    for _ in range(n_lesions):
        ry = rng.uniform(0.12, 0.25) * short
        rx = rng.uniform(0.12, 0.25) * short
        cy = rng.uniform(ry + 1, height - ry - 1)
        cx = rng.uniform(rx + 1, width - rx - 1)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        r2 = (u / rx) ** 2 + (v / ry) ** 2
        inside = r2 <= 1.0
        colour = np.asarray(lesion, dtype=np.float32) + rng.uniform(-12, 12, size=3)
        # Mild radial shading so lesions are not perfectly flat.
        shade = (1.0 - 0.15 * np.clip(r2, 0.0, 1.0))[..., None]
        img = np.where(inside[..., None], colour * shade + rng.normal(0.0, 5.0, size=(height, width, 3)), img)
        mask |= inside
    if not mask.any():  # degenerate tiny images: force a non-empty mask
        mask[height // 2, width // 2] = True
        img[height // 2, width // 2] = lesion
    return np.clip(img, 0, 255).astype(np.uint8), (mask.astype(np.uint8) * 255)


def save_image_pair(
    image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path
) -> None:
    """Write an RGB image (JPEG or PNG from the extension) and a single-channel PNG mask."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    if image_path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(image_path, quality=95)
    else:
        pil.save(image_path)
    Image.fromarray(mask).save(mask_path)
