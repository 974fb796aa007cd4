"""Datalist builders for the 2D segmentation datasets used by the TransFuse bundles.

A *datalist* is a plain ``list`` of ``dict`` items of the form
``{"image": <path>, "label": <path>, "name": <image file stem>}`` that can be fed
directly to :class:`monai.data.Dataset` / :class:`monai.data.CacheDataset`.
All paths are returned as absolute ``str`` so that datalists are JSON-friendly
and the builders can be called from MONAI bundle configs, e.g.::

    "train_datalist": "$transfuse_monai.data.build_pranet_datalist(@dataset_dir)"

Supported layouts:

* PraNet polyp data: ``<root>/TrainDataset/{images,masks}`` and
  ``<root>/TestDataset/<SetName>/{images,masks}``.
* ISIC 2017, official layout (``ISIC-2017_Training_Data`` +
  ``ISIC-2017_Training_Part1_GroundTruth`` and the Validation / Test_v2
  analogues) or a plain ``<root>/<split>/{images,masks}`` layout.
* Any ``images`` / ``masks`` folder pair via :func:`build_image_mask_datalist`.

Builders validate the datalist by default (see :func:`validate_datalist`) and
report *all* problems found in a single :class:`ValueError`.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "PRANET_TEST_SETS",
    "ISIC2017_SPLITS",
    "build_image_mask_datalist",
    "build_pranet_datalist",
    "build_pranet_test_datalists",
    "build_isic2017_datalist",
    "validate_datalist",
    "split_datalist",
]

PathLike = str | os.PathLike

#: File extensions (lower case) recognised as images or masks.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: The five PraNet polyp test sets, in the order used by the paper.
PRANET_TEST_SETS: tuple[str, ...] = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "CVC-300", "ETIS-LaribPolypDB")

#: Official ISIC 2017 folder names per split: ``split -> (images_dir, masks_dir)``.
ISIC2017_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}

_ISIC_MASK_SUFFIX = "_segmentation"
_ISIC_EXCLUDE_SUFFIXES = ("_superpixels",)


# --------------------------------------------------------------------------- helpers


def _as_path(path: PathLike) -> Path:
    """Return ``path`` as an absolute, user-expanded :class:`~pathlib.Path` (symlinks are kept)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _require_dir(path: Path, what: str) -> None:
    """Raise :class:`FileNotFoundError` if ``path`` is not an existing directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: '{path}'.")


def _scan_images(
    folder: Path, exclude_suffixes: Sequence[str] = ()
) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """List image files of ``folder`` keyed by file stem.

    Hidden files (including macOS ``._*`` resource forks), sub-folders and files
    without an image extension (e.g. metadata CSVs) are ignored, as are files
    whose stem ends with one of ``exclude_suffixes``.

    Args:
        folder: directory to scan (non-recursive).
        exclude_suffixes: stem suffixes to skip, e.g. ``("_superpixels",)``.

    Returns:
        ``(unique, duplicates)``: stem -> path for stems that occur once, and
        stem -> paths for stems shared by several files (e.g. ``a.png`` + ``a.jpg``).
    """
    found: dict[str, list[Path]] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
            continue
        if any(entry.stem.endswith(sfx) for sfx in exclude_suffixes):
            continue
        found.setdefault(entry.stem, []).append(entry)
    unique = {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}
    duplicates = {stem: sorted(paths) for stem, paths in found.items() if len(paths) > 1}
    return unique, duplicates


def _raise_problems(problems: list[str], context: str) -> None:
    """Raise a single :class:`ValueError` listing ``problems`` (no-op when empty)."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"{context}: found {len(problems)} problem(s):\n{lines}")


def _collect_problems(
    datalist: Sequence[Mapping], check_sizes: bool, image_key: str, label_key: str
) -> list[str]:
    """Check every datalist entry's files and return human-readable problem descriptions."""
    problems: list[str] = []
    for idx, item in enumerate(datalist):
        image = item.get(image_key) if isinstance(item, Mapping) else None
        if not image:
            problems.append(f"entry #{idx} has no '{image_key}' path: {item!r}")
            continue
        image_name = os.path.basename(os.fspath(image))
        label = item.get(label_key)
        sizes: dict[str, tuple[int, int]] = {}
        checks = [(image_key, image)] + ([(label_key, label)] if label else [])
        if not label:
            problems.append(f"missing mask for image '{image_name}' ({image})")
        for key, path in checks:
            kind = "image" if key == image_key else "mask"
            path = os.fspath(path)
            name = os.path.basename(path)
            if not os.path.isfile(path):
                problems.append(f"{kind} file not found: '{name}' ({path})")
                continue
            try:
                # Opening only parses the header; ``verify`` checks the file
                # structure (e.g. PNG chunk CRCs) without decoding pixel data.
                with Image.open(path) as img:
                    size = img.size
                    img.verify()
            except Exception as err:  # noqa: BLE001 - PIL raises many exception types for bad files
                problems.append(f"unreadable or corrupt {kind} file '{name}' ({path}): {type(err).__name__}: {err}")
                continue
            sizes[key] = size
        if check_sizes and image_key in sizes and label_key in sizes and sizes[image_key] != sizes[label_key]:
            (iw, ih), (mw, mh) = sizes[image_key], sizes[label_key]
            problems.append(
                f"size mismatch for '{image_name}': image is {iw}x{ih} (WxH) but mask "
                f"'{os.path.basename(os.fspath(label))}' is {mw}x{mh}"
            )
    return problems


# --------------------------------------------------------------------------- public API


def validate_datalist(
    datalist: Sequence[Mapping],
    check_sizes: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> list[dict]:
    """Check that every image / mask of a datalist exists, is readable and matches in size.

    Only file headers are parsed (plus PIL's cheap structural ``verify``); pixel
    data is not decoded, so validating thousands of files takes seconds.

    Args:
        datalist: list of ``{"image": path, "label": path, ...}`` dicts.
        check_sizes: also require the image and mask to have the same width and height.
        image_key: key of the image path in each item.
        label_key: key of the mask path in each item.

    Returns:
        ``datalist`` as a list (unchanged), so the call can be chained in bundle configs.

    Raises:
        ValueError: if the datalist is empty, or -- in a single exception listing
            every offending file by name -- if any mask is missing, any file is
            missing / unreadable / corrupt, or an image and its mask differ in size.
    """
    datalist = list(datalist)
    if not datalist:
        raise ValueError("Datalist is empty: no image/mask pairs to validate.")
    _raise_problems(_collect_problems(datalist, check_sizes, image_key, label_key), "Invalid datalist")
    return datalist


def build_image_mask_datalist(
    images_dir: PathLike,
    masks_dir: PathLike,
    mask_suffix: str = "",
    exclude_suffixes: Sequence[str] = (),
    validate: bool = True,
    check_sizes: bool = True,
) -> list[dict]:
    """Pair every image of ``images_dir`` with the mask of ``masks_dir`` sharing its stem.

    The mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<ext2>`` where ``ext`` and
    ``ext2`` are any of :data:`IMAGE_EXTENSIONS` (case-insensitive). Non-image
    files (CSV, TXT, ...), hidden files and sub-folders are ignored.

    Pairing problems (image without mask, mask without image, several files with
    the same stem) are detected without opening any file and are always
    reported; ``validate`` additionally opens every file (see
    :func:`validate_datalist`). All problems are raised together in one
    :class:`ValueError`.

    Args:
        images_dir: folder holding the images.
        masks_dir: folder holding the masks.
        mask_suffix: suffix appended to the image stem to form the mask stem,
            e.g. ``"_segmentation"`` for ISIC 2017 ground truth.
        exclude_suffixes: image stems ending with any of these are skipped,
            e.g. ``("_superpixels",)``.
        validate: open every image / mask header and check readability and sizes.
        check_sizes: when validating, require matching image / mask sizes.

    Returns:
        List of ``{"image": str, "label": str, "name": str}`` sorted by ``name``.

    Raises:
        FileNotFoundError: if either folder does not exist.
        ValueError: if no image is found in ``images_dir`` or any problem is detected.
    """
    images_path, masks_path = _as_path(images_dir), _as_path(masks_dir)
    _require_dir(images_path, "Images")
    _require_dir(masks_path, "Masks")

    images, dup_images = _scan_images(images_path, exclude_suffixes)
    masks, dup_masks = _scan_images(masks_path)
    if not images and not dup_images:
        raise ValueError(
            f"No images found in '{images_path}' (expected files with extensions {', '.join(IMAGE_EXTENSIONS)})."
        )

    problems: list[str] = []
    for stem, paths in sorted(dup_images.items()):
        problems.append(f"ambiguous image stem '{stem}': {', '.join(p.name for p in paths)}")
    for stem, paths in sorted(dup_masks.items()):
        problems.append(f"ambiguous mask stem '{stem}': {', '.join(p.name for p in paths)}")

    datalist: list[dict] = []
    for stem in sorted(images):
        mask = masks.get(stem + mask_suffix)
        if mask is None:
            if stem + mask_suffix not in dup_masks:
                problems.append(
                    f"missing mask for image '{images[stem].name}' (expected '{stem}{mask_suffix}.*' in '{masks_path}')"
                )
            continue
        datalist.append({"image": str(images[stem]), "label": str(mask), "name": stem})

    all_image_stems = set(images) | set(dup_images)
    for mstem in sorted(set(masks) | set(dup_masks)):
        if mask_suffix and not mstem.endswith(mask_suffix):
            image_stem = None
        else:
            image_stem = mstem[: len(mstem) - len(mask_suffix)] if mask_suffix else mstem
        if image_stem is None or image_stem not in all_image_stems:
            names = [masks[mstem].name] if mstem in masks else [p.name for p in dup_masks[mstem]]
            for name in names:
                problems.append(f"mask without image: '{name}' (no matching image in '{images_path}')")

    if validate:
        problems += _collect_problems(datalist, check_sizes, "image", "label")
    _raise_problems(problems, f"Invalid image/mask folders '{images_path}' / '{masks_path}'")
    return datalist


def build_pranet_datalist(
    dataset_dir: PathLike,
    subset: str = "TrainDataset",
    validate: bool = True,
    check_sizes: bool = True,
) -> list[dict]:
    """Build the datalist of one subset of the PraNet polyp dataset.

    Expected layout::

        dataset_dir/TrainDataset/{images,masks}/
        dataset_dir/TestDataset/<SetName>/{images,masks}/

    Args:
        dataset_dir: root of the PraNet data (the folder holding ``TrainDataset``).
        subset: sub-folder holding ``images`` and ``masks``, e.g. ``"TrainDataset"``
            or ``"TestDataset/Kvasir"``.
        validate: open every file header and check readability and sizes.
        check_sizes: when validating, require matching image / mask sizes.

    Returns:
        List of ``{"image": str, "label": str, "name": str}`` sorted by ``name``.

    Raises:
        FileNotFoundError: if the subset's ``images`` or ``masks`` folder is missing.
        ValueError: if the subset is empty or any problem is detected.
    """
    root = _as_path(dataset_dir) / subset
    return build_image_mask_datalist(root / "images", root / "masks", validate=validate, check_sizes=check_sizes)


def build_pranet_test_datalists(
    dataset_dir: PathLike,
    sets: Sequence[str] | str | None = PRANET_TEST_SETS,
    validate: bool = True,
    check_sizes: bool = True,
) -> dict[str, list[dict]]:
    """Build one datalist per PraNet test set found under ``dataset_dir/TestDataset``.

    Sets whose folder does not exist are skipped with one :class:`UserWarning`
    each (naming the set and the path looked at). Sets that exist but are
    broken (empty, missing masks, corrupt files...) raise as in
    :func:`build_pranet_datalist`.

    Args:
        dataset_dir: root of the PraNet data (the folder holding ``TestDataset``).
        sets: test-set names (a single name is accepted too); ``None`` uses every
            sub-folder of ``TestDataset`` in sorted order.
        validate: open every file header and check readability and sizes.
        check_sizes: when validating, require matching image / mask sizes.

    Returns:
        Dict ``set_name -> datalist`` in the order of ``sets``.

    Raises:
        FileNotFoundError: if none of the requested sets exists.
    """
    test_root = _as_path(dataset_dir) / "TestDataset"
    if sets is None:
        _require_dir(test_root, "PraNet TestDataset")
        sets = sorted(p.name for p in test_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    elif isinstance(sets, str):
        sets = [sets]

    datalists: dict[str, list[dict]] = {}
    for name in sets:
        set_dir = test_root / name
        if not set_dir.is_dir():
            warnings.warn(f"PraNet test set '{name}' not found at '{set_dir}'; skipping it.", UserWarning, stacklevel=2)
            continue
        datalists[name] = build_pranet_datalist(
            dataset_dir, f"TestDataset/{name}", validate=validate, check_sizes=check_sizes
        )
    if not datalists:
        raise FileNotFoundError(f"None of the PraNet test sets {list(sets)} was found in '{test_root}'.")
    return datalists


def build_isic2017_datalist(
    dataset_dir: PathLike,
    split: str = "train",
    validate: bool = True,
    check_sizes: bool = True,
) -> list[dict]:
    """Build the datalist of one ISIC 2017 (Part 1, lesion segmentation) split.

    Two layouts are accepted, the official one taking precedence:

    * official: ``ISIC-2017_Training_Data/ISIC_xxxxxxx.jpg`` with
      ``ISIC-2017_Training_Part1_GroundTruth/ISIC_xxxxxxx_segmentation.png``
      (``Validation`` and ``Test_v2`` analogues, see :data:`ISIC2017_SPLITS`);
      ``*_superpixels.png`` files and the metadata CSV are ignored.
    * plain: ``dataset_dir/<split>/{images,masks}``, masks named either like the
      image (``ISIC_xxxxxxx.png``) or with the official ``_segmentation``
      suffix (detected automatically when every mask carries it).

    Args:
        dataset_dir: root holding the official folders or the split folders.
        split: one of ``"train"``, ``"val"``, ``"test"``.
        validate: open every file header and check readability and sizes.
        check_sizes: when validating, require matching image / mask sizes.

    Returns:
        List of ``{"image": str, "label": str, "name": str}`` sorted by ``name``.

    Raises:
        ValueError: on an unknown ``split``, an empty split or any problem detected.
        FileNotFoundError: if neither layout is found for ``split``.
    """
    if split not in ISIC2017_SPLITS:
        raise ValueError(f"Unknown ISIC 2017 split '{split}', expected one of {sorted(ISIC2017_SPLITS)}.")
    root = _as_path(dataset_dir)
    data_name, gt_name = ISIC2017_SPLITS[split]
    official_images = root / data_name
    if official_images.is_dir():
        return build_image_mask_datalist(
            official_images,
            root / gt_name,
            mask_suffix=_ISIC_MASK_SUFFIX,
            exclude_suffixes=_ISIC_EXCLUDE_SUFFIXES,
            validate=validate,
            check_sizes=check_sizes,
        )

    plain = root / split
    if not plain.is_dir():
        raise FileNotFoundError(
            f"ISIC 2017 split '{split}' not found in '{root}': expected either the official folders "
            f"'{data_name}' + '{gt_name}' or a plain '{split}/images' + '{split}/masks' layout."
        )
    masks_dir = plain / "masks"
    mask_suffix = ""
    if masks_dir.is_dir():
        mask_masks, mask_dups = _scan_images(masks_dir)
        stems = list(mask_masks) + list(mask_dups)
        if stems and all(s.endswith(_ISIC_MASK_SUFFIX) for s in stems):
            mask_suffix = _ISIC_MASK_SUFFIX
    return build_image_mask_datalist(
        plain / "images",
        masks_dir,
        mask_suffix=mask_suffix,
        exclude_suffixes=_ISIC_EXCLUDE_SUFFIXES,
        validate=validate,
        check_sizes=check_sizes,
    )


def split_datalist(
    datalist: Iterable[Mapping], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Deterministically split a datalist into training and validation parts.

    The split depends only on ``len(datalist)``, ``val_fraction`` and ``seed``
    (a private :class:`random.Random` is used, the global RNG is untouched).
    Both parts keep the original item order. When ``val_fraction > 0`` and the
    datalist has more than one item, validation gets at least one item and
    training keeps at least one.

    Args:
        datalist: items to split.
        val_fraction: fraction of items for validation, in ``[0, 1)``.
        seed: seed of the shuffle.

    Returns:
        ``(train, val)`` lists of shallow-copied items.

    Raises:
        ValueError: if ``val_fraction`` is outside ``[0, 1)``.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    items = [dict(d) for d in datalist]
    n = len(items)
    n_val = int(round(n * float(val_fraction)))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = min(n_val, max(n - 1, 0))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val
