"""Tiny synthetic datasets in the PraNet and ISIC 2017 folder layouts.

The generated images are small RGB pictures with a smooth textured background
and one or two elliptical "lesions" (polyps / skin lesions) of a clearly
different colour, together with binary 0/255 PNG masks. They are meant for
tests, smoke runs of the bundles and tutorials: a few iterations of training
are enough for a network to improve its Dice score on them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .datalists import ISIC2017_SPLITS

__all__ = ["make_synthetic_pranet_dataset", "make_synthetic_isic2017_dataset"]

PathLike = str | os.PathLike
SizeSpec = tuple[int, int] | Sequence[tuple[int, int]] | None

# Background / lesion base colours (RGB).
_POLYP_BACKGROUND = (170, 75, 70)  # reddish mucosa
_POLYP_COLOUR = (240, 200, 120)  # pale yellow polyp
_SKIN_BACKGROUND = (225, 185, 160)  # light skin
_SKIN_LESION = (105, 65, 45)  # dark brown lesion


def _is_size(value: object) -> bool:
    """Return ``True`` if ``value`` looks like a single ``(height, width)`` pair."""
    return isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)


def _resolve_sizes(spec: SizeSpec, default: tuple[int, int], n: int) -> list[tuple[int, int]]:
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


def _draw_sample(
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


def _save_pair(
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


def make_synthetic_pranet_dataset(
    root: PathLike,
    n_train: int = 8,
    test_sets: Mapping[str, int] | None = None,
    size: tuple[int, int] = (64, 64),
    test_sizes: SizeSpec | Mapping[str, SizeSpec] = None,
    seed: int = 0,
) -> str:
    """Write a synthetic polyp dataset in the PraNet layout.

    Layout::

        root/TrainDataset/images/0000.png, 0001.jpg, ...
        root/TrainDataset/masks/0000.png, 0001.png, ...
        root/TestDataset/<SetName>/{images,masks}/...

    Images alternate between PNG (even index) and JPEG (odd index) to exercise
    mixed extensions; masks are always single-channel 0/255 PNG files with the
    same stem. Each image holds one or two pale elliptical polyps on a
    textured reddish background.

    Args:
        root: output folder (created if needed).
        n_train: number of training pairs.
        test_sets: ``set name -> number of pairs``; ``None`` means
            ``{"Kvasir": 3, "CVC-ClinicDB": 3}`` and ``{}`` writes no test set.
        size: ``(height, width)`` of the training images (and of the test
            images when ``test_sizes`` is ``None``).
        test_sizes: size(s) of the test images: ``None`` (use ``size``), one
            ``(height, width)``, a list of them cycled over the images of each
            set, or a mapping ``set name -> one of these``. Use sizes different
            from ``size``, e.g. ``(70, 90)``, to exercise resizing predictions
            back to the original resolution.
        seed: seed of the generator; the output is fully deterministic.

    Returns:
        ``str(root)``.
    """
    if test_sets is None:
        test_sets = {"Kvasir": 3, "CVC-ClinicDB": 3}
    root_path = Path(root)
    rng = np.random.default_rng(seed)

    def write_subset(subset: Path, sizes: list[tuple[int, int]]) -> None:
        for i, (h, w) in enumerate(sizes):
            img, mask = _draw_sample(rng, h, w, _POLYP_BACKGROUND, _POLYP_COLOUR, int(rng.integers(1, 3)))
            ext = ".png" if i % 2 == 0 else ".jpg"
            _save_pair(img, mask, subset / "images" / f"{i:04d}{ext}", subset / "masks" / f"{i:04d}.png")

    write_subset(root_path / "TrainDataset", _resolve_sizes(size, size, n_train))
    for name, count in test_sets.items():
        spec = test_sizes.get(name) if isinstance(test_sizes, Mapping) else test_sizes
        write_subset(root_path / "TestDataset" / name, _resolve_sizes(spec, size, count))
    return str(root_path)


def make_synthetic_isic2017_dataset(
    root: PathLike,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    size: tuple[int, int] = (64, 64),
    official_layout: bool = True,
    seed: int = 0,
) -> str:
    """Write a synthetic skin-lesion dataset in an ISIC 2017 layout.

    Image ids are unique across splits (``ISIC_0000000`` ...). With
    ``official_layout=True`` the official folder names are used
    (``ISIC-2017_Training_Data`` + ``ISIC-2017_Training_Part1_GroundTruth``,
    ``Validation`` and ``Test_v2`` analogues), masks are named
    ``ISIC_xxxxxxx_segmentation.png`` and, like the real archives, the data
    folders also contain ``ISIC_xxxxxxx_superpixels.png`` files and a metadata
    CSV (both must be ignored by datalist builders). Otherwise the plain
    ``root/<split>/{images,masks}`` layout is written with masks named like
    their image (``ISIC_xxxxxxx.png``).

    Args:
        root: output folder (created if needed).
        n_train: number of training pairs.
        n_val: number of validation pairs.
        n_test: number of test pairs.
        size: ``(height, width)`` of every image.
        official_layout: write the official ISIC 2017 layout instead of the plain one.
        seed: seed of the generator; the output is fully deterministic.

    Returns:
        ``str(root)``.
    """
    root_path = Path(root)
    rng = np.random.default_rng(seed)
    next_id = 0
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        data_name, gt_name = ISIC2017_SPLITS[split]
        if official_layout:
            images_dir, masks_dir = root_path / data_name, root_path / gt_name
        else:
            images_dir, masks_dir = root_path / split / "images", root_path / split / "masks"
        images_dir.mkdir(parents=True, exist_ok=True)
        masks_dir.mkdir(parents=True, exist_ok=True)
        ids = []
        for h, w in _resolve_sizes(size, size, count):
            stem = f"ISIC_{next_id:07d}"
            next_id += 1
            ids.append(stem)
            img, mask = _draw_sample(rng, h, w, _SKIN_BACKGROUND, _SKIN_LESION, 1)
            mask_name = f"{stem}_segmentation.png" if official_layout else f"{stem}.png"
            _save_pair(img, mask, images_dir / f"{stem}.jpg", masks_dir / mask_name)
            if official_layout:
                superpixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(superpixels).save(images_dir / f"{stem}_superpixels.png")
        if official_layout:
            lines = ["image_id,age_approximate,sex"] + [f"{s},55,unknown" for s in ids]
            (images_dir / f"{data_name}_metadata.csv").write_text("\n".join(lines) + "\n")
    return str(root_path)
