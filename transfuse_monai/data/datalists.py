"""Generic datalists of 2D image/mask pairs: pairing, validation, splits, inference lists.

A *datalist* is a plain ``list`` of ``dict`` items ``{"image": <path>, "label": <path>, "name": <image file stem>}``
that :class:`monai.data.Dataset` / :class:`monai.data.CacheDataset` take directly. Paths are absolute ``str``, so
datalists are JSON-friendly. Builders validate by default (see :func:`validate_datalist`) and report *all* problems
found in a single :class:`ValueError` that names every file.

Dataset layouts (PraNet, ISIC 2017, ...) are not here: each task module of :mod:`transfuse_monai.tasks` knows its
own layout and calls these helpers.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .checks import check_picture, raise_problems
from .formats import IMAGE_EXTENSIONS, file_stem
from transfuse_monai.utils.io import absolute_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "scan_images",
    "build_image_mask_datalist",
    "validate_datalist",
    "split_datalist",
    "grouped_datalist",
    "image_datalist",
    "read_json_datalist",
    "decathlon_items",
    "assign_folds",
    "pair_by_stem",
    "write_split_datalist",
]

PathLike = str | os.PathLike



# --------------------------------------------------------------------------- helpers



def _require_dir(path: Path, what: str) -> None:
    """Raise :class:`FileNotFoundError` if ``path`` is not an existing directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: '{path}'.")


def scan_images(
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


def _collect_problems(
    datalist: Sequence[Mapping],
    check_sizes: bool,
    image_key: str,
    label_key: str,
    channels: int | None = None,
    num_classes: int | None = None,
) -> list[str]:
    """Check every datalist entry's files with :func:`~transfuse_monai.data.checks.check_picture` and return
    human-readable problem descriptions; empty masks are not problems but one ``UserWarning`` lists them."""
    problems: list[str] = []
    empty: list[str] = []
    for idx, item in enumerate(datalist):
        image = item.get(image_key) if isinstance(item, Mapping) else None
        if not image:
            problems.append(f"entry #{idx} has no '{image_key}' path: {item!r}")
            continue
        image_name = os.path.basename(os.fspath(image))
        label = item.get(label_key)
        if not label:
            problems.append(f"missing mask for image '{image_name}' ({image})")
        image_check = check_picture(image, "image", channels=channels)
        problems += image_check.problems
        if not label:
            continue
        mask_check = check_picture(label, "mask", num_classes=num_classes)
        problems += mask_check.problems
        if mask_check.empty:
            empty.append(os.fspath(label))
        if check_sizes and image_check.size and mask_check.size and image_check.size != mask_check.size:
            (iw, ih), (mw, mh) = image_check.size, mask_check.size
            problems.append(
                f"size mismatch for '{image_name}': image is {iw}x{ih} (WxH) but mask "
                f"'{os.path.basename(os.fspath(label))}' is {mw}x{mh}"
            )
    if empty:
        warnings.warn(
            f"{len(empty)} mask(s) hold background only (legitimate for frames without the object; check them if "
            f"unexpected): {', '.join(empty)}",
            UserWarning,
            stacklevel=3,
        )
    return problems


# --------------------------------------------------------------------------- public API


def validate_datalist(
    datalist: Sequence[Mapping],
    check_sizes: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    channels: int | None = None,
    num_classes: int | None = None,
) -> list[dict]:
    """Check that every image / mask of a datalist exists, decodes, fits the task and matches in size.

    Each 2D file is decoded once (:func:`~transfuse_monai.data.checks.check_picture`), so a corrupt or truncated
    file is reported here, by name, rather than failing inside a transform during training.

    Args:
        datalist: list of ``{"image": path, "label": path, ...}`` dicts.
        check_sizes: also require the image and mask to have the same width and height.
        image_key: key of the image path in each item.
        label_key: key of the mask path in each item.
        channels: the network's input channels: images whose pixel format the loading transforms cannot turn into
            them are reported (grey-scale is repeated to RGB and an alpha channel dropped: both are fine);
            ``None`` skips the check.
        num_classes: the task's classes (background included): masks with other values are reported (binary: 0/1
            or 0/255); ``None`` skips the check.

    Returns:
        ``datalist`` as a list (unchanged), so the call can be chained in bundle configs.

    Raises:
        ValueError: if the datalist is empty, or -- in a single exception listing every offending file by name and
            reason -- if any mask is missing, any file is missing / unreadable / corrupt / truncated / multi-frame,
            an image has a pixel format or a mask values that do not fit, or an image and its mask differ in size.
            Masks holding background only are not errors: one ``UserWarning`` lists them.
    """
    datalist = list(datalist)
    if not datalist:
        raise ValueError("Datalist is empty: no image/mask pairs to validate.")
    problems = _collect_problems(datalist, check_sizes, image_key, label_key, channels, num_classes)
    raise_problems(problems, "Invalid datalist")
    return datalist


def build_image_mask_datalist(
    images_dir: PathLike,
    masks_dir: PathLike,
    mask_suffix: str = "",
    exclude_suffixes: Sequence[str] = (),
    validate: bool = True,
    check_sizes: bool = True,
    channels: int | None = None,
    num_classes: int | None = None,
) -> list[dict]:
    """Pair every image of ``images_dir`` with the mask of ``masks_dir`` sharing its stem.

    The mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<ext2>`` where ``ext`` and
    ``ext2`` are any of :data:`IMAGE_EXTENSIONS` (case-insensitive). Non-image
    files (CSV, TXT, ...), hidden files and sub-folders are ignored.

    Pairing problems (image without mask, mask without image, several files with
    the same stem) are detected without opening any file and are always
    reported; ``validate`` additionally decodes every file (see
    :func:`validate_datalist`). All problems are raised together in one
    :class:`ValueError`.

    Args:
        images_dir: folder holding the images.
        masks_dir: folder holding the masks.
        mask_suffix: suffix appended to the image stem to form the mask stem,
            e.g. ``"_segmentation"`` for ISIC 2017 ground truth.
        exclude_suffixes: image stems ending with any of these are skipped,
            e.g. ``("_superpixels",)``.
        validate: decode every image / mask and check it (see :func:`validate_datalist`).
        check_sizes: when validating, require matching image / mask sizes.
        channels: when validating, the network's input channels (see :func:`validate_datalist`).
        num_classes: when validating, the task's number of classes (see :func:`validate_datalist`).

    Returns:
        List of ``{"image": str, "label": str, "name": str}`` sorted by ``name``.

    Raises:
        FileNotFoundError: if either folder does not exist.
        ValueError: if no image is found in ``images_dir`` or any problem is detected.
    """
    images_path, masks_path = absolute_path(images_dir), absolute_path(masks_dir)
    _require_dir(images_path, "Images")
    _require_dir(masks_path, "Masks")

    images, dup_images = scan_images(images_path, exclude_suffixes)
    masks, dup_masks = scan_images(masks_path)
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
        problems += _collect_problems(datalist, check_sizes, "image", "label", channels, num_classes)
    raise_problems(problems, f"Invalid image/mask folders '{images_path}' / '{masks_path}'")
    return datalist


def split_datalist(
    datalist: Iterable[Mapping], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Deterministically split a datalist into training and validation parts with MONAI's
    :func:`~monai.data.partition_dataset` (seeded shuffle, the global RNG untouched).

    The split depends only on the items' order, ``val_fraction`` and ``seed``. When ``val_fraction > 0`` and the
    datalist has more than one item, validation gets at least one item and training keeps at least one.

    Args:
        datalist: items to split.
        val_fraction: fraction of items for validation, in ``[0, 1)``.
        seed: seed of the shuffle.

    Returns:
        ``(train, val)`` lists of shallow-copied items.

    Raises:
        ValueError: if ``val_fraction`` is outside ``[0, 1)``.
    """
    from monai.data import partition_dataset

    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    items = [dict(d) for d in datalist]
    n = len(items)
    n_val = int(round(n * float(val_fraction)))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = min(n_val, max(n - 1, 0))
    if n == 0:
        return [], []
    # ratios given as counts: partition_dataset's rounding then reproduces them exactly
    train, val = partition_dataset(items, ratios=[n - n_val, n_val], shuffle=True, seed=int(seed))
    return train, val


def grouped_datalist(groups: Mapping[str, Sequence[Mapping]], key: str = "set") -> list[dict]:
    """Concatenate named datalists into one, tagging each item with its group name under ``key`` (the test-set
    column of evaluation reports)."""
    return [{**item, key: name} for name, items in groups.items() for item in items]


def image_datalist(
    source: PathLike | Sequence,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    exclude_suffixes: Sequence[str] = (),
) -> list[dict]:
    """Datalist ``[{"image": path}, ...]`` for inference from a folder of images, one image file, a JSON datalist file
    (a list, or a dict with a ``"testing"``/``"test"``/``"data"`` list, of paths or ``{"image": path}`` items; relative
    paths are relative to the file), or a list.

    Args:
        source: folder, image file, JSON file or sequence of paths / items.
        extensions: file extensions (lower case) taken from a folder.
        exclude_suffixes: skips the files of a folder whose stem ends with one of them (e.g. ``("_superpixels",)``
            for the ISIC 2017 data folders, which also hold superpixel maps).

    Raises:
        FileNotFoundError: ``source`` or one of the listed images does not exist.
        ValueError: no image was found, a file is neither an image nor JSON, or the JSON file has none of the
            expected keys.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            items: list = [
                str(p) for p in sorted(path.iterdir())
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in tuple(extensions)
                and not any(p.stem.endswith(sfx) for sfx in exclude_suffixes)
            ]
        elif path.is_file() and path.suffix.lower() in tuple(extensions):  # one image
            items = [str(path)]
        elif path.is_file():
            try:
                content = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"Inference input {path} is neither an image ({', '.join(extensions)}) nor a JSON "
                                 f"datalist: {err}") from None
            if isinstance(content, dict):
                content = next((content[k] for k in ("testing", "test", "data") if k in content), None)
                if content is None:
                    raise ValueError(f"Datalist file {path} has none of the keys 'testing', 'test', 'data'.")
            items = []
            for c in content:
                item = dict(c) if isinstance(c, Mapping) else {"image": str(c)}
                if not os.path.isabs(item["image"]):
                    item["image"] = str(path.parent / item["image"])
                items.append(item)
        else:
            raise FileNotFoundError(f"Inference input not found: {path}")
    else:
        items = list(source)
    datalist = [dict(item) if isinstance(item, Mapping) else {"image": str(item)} for item in items]
    if not datalist:
        raise ValueError(f"No images ({', '.join(extensions)}) found in {source}.")
    missing = [d["image"] for d in datalist if not Path(d["image"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} input image(s) do not exist: {', '.join(missing[:5])}")
    return datalist


# --------------------------------------------------------------------------- MONAI's decathlon convention


def read_json_datalist(path: PathLike) -> dict:
    """The JSON object of a datalist file, with an error naming the file when it is missing, unreadable or not an
    object (MONAI's decathlon convention: ``{"training": [...], "validation": [...], "test": [...], ...}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a JSON object.
    """
    path = absolute_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist file not found: '{path}'")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"datalist '{path}' is not valid JSON: {type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"datalist '{path}' must hold a JSON object of lists ('training', 'validation', 'test', ...).")
    return content


def decathlon_items(json_file: PathLike, key: str, base_dir: PathLike | None = None) -> list[dict]:
    """The items of list ``key`` of a decathlon-convention datalist, read by MONAI's
    :func:`~monai.data.load_decathlon_datalist`: ``image`` / ``label`` paths made absolute (relative to ``base_dir``,
    default the file's folder), other keys kept, and a ``name`` (the image's file stem) unless the item has one.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON object, or no list ``key`` (the lists it has are named).
    """
    from monai.data import load_decathlon_datalist

    json_file = absolute_path(json_file)
    content = read_json_datalist(json_file)
    if key not in content:
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(f"datalist '{json_file}' has no '{key}' list (its lists: {lists}).")
    if not content[key]:
        return []
    base = absolute_path(base_dir) if base_dir is not None else json_file.parent
    items = load_decathlon_datalist(json_file, is_segmentation=True, data_list_key=key, base_dir=base)
    out = []
    for d in items:
        item = {k: (str(absolute_path(v)) if k in ("image", "label") else v) for k, v in d.items()}
        item.setdefault("name", file_stem(item["image"]))
        out.append(item)
    return out


def assign_folds(names: Sequence[str], num_folds: int, seed: int = 0) -> dict[str, int]:
    """Cross-validation folds: ``names`` sorted, shuffled with ``seed`` and dealt into ``num_folds`` parts of sizes
    differing by at most one (MONAI's :func:`~monai.data.partition_dataset`); returns ``name -> fold``. The folds
    depend on the names only, not on their order, so every run and every machine gets the same ones."""
    from monai.data import partition_dataset

    parts = partition_dataset(sorted(names), num_partitions=num_folds, shuffle=True, seed=seed, even_divisible=False)
    return {name: k for k, part in enumerate(parts) for name in part}


def pair_by_stem(
    images_dir: PathLike, labels_dir: PathLike, extensions: Sequence[str]
) -> list[tuple[Path, Path]]:
    """Image / label pairs of two folders, paired by file name without extension (``0001.dcm`` with ``0001.png``).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: images without a label or labels without an image (all named), or no pair.
    """
    images_dir, labels_dir = absolute_path(images_dir), absolute_path(labels_dir)
    _require_dir(images_dir, "images")
    _require_dir(labels_dir, "labels")

    def scan(folder: Path) -> dict[str, Path]:
        return {
            file_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(tuple(extensions))
        }

    images, labels = scan(images_dir), scan(labels_dir)
    problems = [f"image without label: '{images[s]}'" for s in sorted(set(images) - set(labels))]
    problems += [f"label without image: '{labels[s]}'" for s in sorted(set(labels) - set(images))]
    if problems:
        raise ValueError("cannot pair images and labels:\n" + "\n".join(f"  - {p}" for p in problems))
    if not images:
        raise ValueError(f"no image ({', '.join(extensions)}) found in '{images_dir}'.")
    return [(images[s], labels[s]) for s in sorted(images)]


def write_split_datalist(
    images_dir: PathLike,
    labels_dir: PathLike,
    output: PathLike,
    seed: int = 0,
    ratios: Sequence[float] = (7, 1, 2),
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    extra: Mapping | None = None,
) -> dict:
    """Write a random train / validation / test split of image / label pairs as a decathlon-convention datalist
    JSON (``training``, ``validation``, ``test``), paths relative to the JSON file's folder (the dataset folder).

    Pairs come from :func:`pair_by_stem`; the shuffle is MONAI's :func:`~monai.data.partition_dataset` with ``seed``,
    so the split is reproducible.

    Args:
        images_dir: folder of images.
        labels_dir: folder of label maps.
        output: the JSON file to write (atomically).
        seed: seed of the shuffle.
        ratios: relative sizes of the training, validation and test parts (the paper's hip split is 7:1:2).
        extensions: the file endings taken from the folders.
        extra: file-level entries written beside the lists (e.g. a default ``spacing``).

    Returns:
        The datalist written.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: unpaired files, no pair, or bad ratios.
    """
    from monai.data import partition_dataset

    from transfuse_monai.utils import atomic_write_json

    if len(ratios) != 3 or any(float(r) < 0 for r in ratios) or sum(float(r) for r in ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, validation, test), got {list(ratios)}.")
    output = Path(output).absolute()
    base = output.parent
    items = [
        {"image": os.path.relpath(image, base), "label": os.path.relpath(label, base)}
        for image, label in pair_by_stem(images_dir, labels_dir, extensions)
    ]
    parts = partition_dataset(items, ratios=[float(r) for r in ratios], shuffle=True, seed=int(seed))
    content: dict = {
        "description": f"random {':'.join(f'{r:g}' for r in ratios)} split, seed {seed}",
        **dict(extra or {}),
        "training": parts[0],
        "validation": parts[1],
        "test": parts[2],
    }
    atomic_write_json(output, content)
    return content
