# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""A 2D task's dataset in nnU-Net v2's raw format: ``python -m transfuse_monai.nnunet convert polyp <root> 501``.

The task module finds and checks the files (:meth:`~transfuse_monai.tasks.SegmentationTask.datalist`, every file
validated before anything is written) and loads them as the bundles do
(:meth:`~transfuse_monai.tasks.SegmentationTask.load_transforms`: channels, class indices, pixel spacing); this
module only writes nnU-Net's layout::

    $nnUNet_raw/Dataset501_Polyp/
        dataset.json                  channel_names, labels, numTraining, file_ending, overwrite_image_reader_writer
        imagesTr/<case>_0000.png      every split but "test" (nnU-Net makes its own cross-validation folds)
        labelsTr/<case>.png           class indices 0..K-1
        imagesTs/, labelsTs/          the task's "test" split, when it has one

Photographs (tasks whose distances are in pixels: polyp, ISIC 2017) are written as PNG for nnU-Net's
``NaturalImage2DIO``, RGB in one file. Radiographs (tasks in mm: hip) are written as 2D NIfTI for ``SimpleITKIO``,
keeping their pixel spacing, which nnU-Net then uses in planning and evaluation. 3D tasks are converted by nnU-Net's
own ``nnUNetv2_convert_MSD_dataset``.

The dataset is written to a hidden folder beside its destination and renamed into place when complete: an
interrupted conversion leaves no partial dataset, and an existing dataset (or another dataset with the same ID) is
never written over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfuse_monai.tasks import SegmentationTask, get_task

__all__ = ["convert_task", "raw_folder", "case_identifier"]

_READER_WRITER = {".png": "NaturalImage2DIO", ".nii.gz": "SimpleITKIO"}


def raw_folder(raw_root: str | os.PathLike | None = None) -> Path:
    """``raw_root``, else ``$nnUNet_raw``.

    Raises:
        ValueError: neither is given.
    """
    root = raw_root if raw_root is not None else os.environ.get("nnUNet_raw")
    if not root:
        raise ValueError("No nnU-Net raw folder: pass --raw DIR or set the nnUNet_raw environment variable.")
    return Path(root)


def case_identifier(item: dict) -> str:
    """nnU-Net's case identifier of a datalist item: its ``name`` (the file stem), prefixed by its ``set`` (PraNet's
    test sets), characters other than letters, digits, ``-`` and ``_`` replaced by ``_``."""
    name = str(item.get("name") or Path(str(item["image"])).name.split(".")[0])
    if item.get("set"):
        name = f"{item['set']}_{name}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _check_ids(items: Sequence[dict], split: str) -> list[str]:
    ids = [case_identifier(item) for item in items]
    seen: dict[str, str] = {}
    for case, item in zip(ids, items):
        if case in seen:
            raise ValueError(
                f"Two {split} images give the nnU-Net case identifier '{case}': '{seen[case]}' and '{item['image']}'."
            )
        seen[case] = str(item["image"])
    return ids


def _dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"nnU-Net dataset IDs are 1..999, got {dataset_id}.")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise ValueError(f"The dataset name must hold letters, digits and '-' only (nnU-Net splits on '_'), got '{name}'.")
    return f"Dataset{int(dataset_id):03d}_{name}"


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)  # (H, W) -> SimpleITK (x = column, y = row)
    image.SetSpacing((float(spacing[1]), float(spacing[0])))
    sitk.WriteImage(image, str(path), useCompression=True)


def _spacing(tensor) -> tuple[float, float]:
    affine = np.asarray(tensor.affine)
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(2))


def convert_task(
    task: str | SegmentationTask,
    data_root: str | os.PathLike,
    dataset_id: int,
    name: str | None = None,
    raw_root: str | os.PathLike | None = None,
    size: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Write ``task``'s dataset at ``data_root`` as nnU-Net raw dataset ``dataset_id``.

    Args:
        task: a 2D task or its registered name (``"polyp"``, ``"isic2017"``, ``"hip"``).
        data_root: the dataset in the task's layout.
        dataset_id: nnU-Net's dataset ID (1..999), unused in ``raw_root``.
        name: the dataset's name (``Dataset<id>_<name>``); defaults to the task's name, capitalised.
        raw_root: nnU-Net's raw folder; defaults to ``$nnUNet_raw``.
        size: ``(H, W)`` to resize every image to (bilinear with anti-aliasing; labels nearest), as the bundles
            train (the paper's 352x352 for polyps); ``None`` keeps the stored sizes.
        progress: show a progress bar.

    Returns:
        the dataset folder.

    Raises:
        ValueError: a 3D task, an invalid or taken ID, files that fail the task's checks (all named together,
            before anything is written), or two images with the same case identifier.
        FileExistsError: the destination exists.
    """
    from monai.transforms import Compose, Resized
    from tqdm import tqdm

    task = get_task(task) if isinstance(task, str) else task
    if task.spatial_dims != 2:
        raise ValueError(
            f"The {task.name} task stores {task.spatial_dims}D images; convert them with nnU-Net's own command, "
            f"e.g. nnUNetv2_convert_MSD_dataset -i <Task05_Prostate folder> for MSD prostate."
        )
    folder_name = _dataset_name(dataset_id, name or task.name.capitalize())
    raw = raw_folder(raw_root)
    taken = sorted(p.name for p in raw.glob(f"Dataset{int(dataset_id):03d}_*")) if raw.is_dir() else []
    if taken:
        raise FileExistsError(
            f"nnU-Net dataset ID {int(dataset_id)} is already taken in '{raw}' by {taken}; choose another ID "
            "(existing datasets are never written over)."
        )

    # every file is checked by the task before anything is written
    training = [item for split in task.splits if split != "test" for item in task.datalist(data_root, split)]
    test = task.datalist(data_root, "test") if "test" in task.splits and _has_split(task, data_root, "test") else []
    training_ids, test_ids = _check_ids(training, "training"), _check_ids(test, "test")
    if not training:
        raise ValueError(f"No training images found for the {task.name} task in '{data_root}'.")

    ending = ".nii.gz" if task.distance_unit == "mm" else ".png"
    transforms = task.load_transforms()
    if size is not None:
        size = tuple(int(s) for s in size)
        transforms.append(Resized(keys=["image", "label"], spatial_size=size, mode=["bilinear", "nearest"],
                                  anti_aliasing=[True, False]))
    load = Compose(transforms)

    raw.mkdir(parents=True, exist_ok=True)
    destination = raw / folder_name
    partial = raw / f".{folder_name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        counts = {}
        for split, items, ids, images, labels in (
            ("training", training, training_ids, "imagesTr", "labelsTr"),
            ("test", test, test_ids, "imagesTs", "labelsTs"),
        ):
            if not items:
                continue
            (partial / images).mkdir(parents=True)
            (partial / labels).mkdir(parents=True)
            bar = tqdm(list(zip(items, ids)), desc=f"{folder_name} {split}", unit="image", disable=not progress)
            for item, case in bar:
                loaded = load({"image": item["image"], "label": item["label"],
                               **({"spacing": item["spacing"]} if "spacing" in item else {})})
                image, label = loaded["image"], loaded["label"]
                label_array = np.asarray(label[0]).round().astype(np.uint8)
                if ending == ".png":
                    pixels = np.clip(np.asarray(image), 0, 255).round().astype(np.uint8)
                    _write_png(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1),
                               partial / images / f"{case}_0000.png")
                    _write_png(label_array, partial / labels / f"{case}.png")
                else:
                    spacing = _spacing(image)
                    for channel in range(image.shape[0]):
                        _write_nifti(np.asarray(image[channel], dtype=np.float32), spacing,
                                     partial / images / f"{case}_{channel:04d}{ending}")
                    _write_nifti(label_array, spacing, partial / labels / f"{case}{ending}")
            counts[split] = len(items)
        channels = {str(i): n for i, n in enumerate(task.channel_names)}
        dataset = {
            "name": folder_name,
            "description": f"{task.title}, converted by transfuse_monai from '{Path(data_root).resolve()}'"
                           + (f", resized to {size[0]}x{size[1]}" if size is not None else ""),
            "channel_names": channels,
            "labels": {n: v for v, n in enumerate(task.class_names)},
            "numTraining": counts["training"],
            "file_ending": ending,
            "overwrite_image_reader_writer": _READER_WRITER[ending],
            "transfuse_monai": {"task": task.name, "source": str(Path(data_root).resolve()),
                                "size": list(size) if size is not None else None, "test_cases": counts.get("test", 0)},
        }
        (partial / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        if destination.exists():
            raise FileExistsError(f"'{destination}' exists; it is never written over.")
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return destination


def _has_split(task: SegmentationTask, root: str | os.PathLike, split: str) -> bool:
    """Whether the dataset holds ``split`` (PraNet's TestDataset may be absent): the task's datalist is tried without
    validation, and a missing split is not an error here."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(task.datalist(root, split, validate=False))
    except (FileNotFoundError, ValueError):
        return False
