# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Prostate zones in multi-parametric MRI, Medical Segmentation Decathlon Task05 (the paper's 3D task).

Layout (MSD, http://medicaldecathlon.com)::

    <root>/dataset.json                    "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": ...}],
                                           "test": ["./imagesTs/prostate_03.nii.gz", ...]
    <root>/imagesTr/prostate_XX.nii.gz     4D, channel last: 0 = T2, 1 = ADC
    <root>/labelsTr/prostate_XX.nii.gz     3D: 0 background, 1 peripheral zone (PZ), 2 transition zone (TZ)
    <root>/imagesTs/prostate_XX.nii.gz     optional, no labels

Three classes with a softmax output; the 2D TransFuse sees axial slices of the volumes (see the bundle
``bundles/prostate``). The 32 training cases are split into :data:`NUM_FOLDS` fixed cross-validation folds
(:meth:`ProstateTask.folds`); ``modalities`` selects the input channels (``[0]``: T2 only, where a 3D image counts as
channel 0).

Besides the task, this module holds the few pieces the prostate bundle needs that are specific to it: the channel
selection (:class:`SelectModalitiesd`), class-balanced 2D slices of a volume (:class:`RandClassSlicesd`), an atomic
NIfTI writer (:class:`AtomicNibabelWriter`), the seconds-per-volume handler (:class:`SecondsPerVolume`) and the
cross-validation table (:func:`aggregate_folds`, the paper's Table 4 layout).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform

from transfuse_monai.data.formats import NIFTI_EXTENSIONS, file_stem
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.utils import atomic_write_json, atomic_write_text

__all__ = [
    "MSD_TASK",
    "NUM_FOLDS",
    "PAPER_TABLE4",
    "ProstateTask",
    "SelectModalitiesd",
    "class_output",
    "aggregate_folds",
    "write_mr_series",
]

logger = logging.getLogger(__name__)

#: MSD task folder name (and MONAI ``DecathlonDataset`` task) of the prostate data.
MSD_TASK = "Task05_Prostate"
#: Number of cross-validation folds over the training cases.
NUM_FOLDS = 5
#: The paper's Table 4 (5-fold cross-validation on MSD Task05): Dice per zone, mean Dice, seconds per volume.
PAPER_TABLE4: dict[str, dict[str, float]] = {
    "nnU-Net 2D": {"dice_PZ": float("nan"), "dice_TZ": float("nan"), "dice": 0.7333, "seconds_per_volume": 0.209},
    "nnU-Net 3D full resolution": {
        "dice_PZ": float("nan"), "dice_TZ": float("nan"), "dice": 0.7537, "seconds_per_volume": 0.381,
    },
    "TransFuse-S (paper)": {"dice_PZ": 0.6738, "dice_TZ": 0.8539, "dice": 0.7639, "seconds_per_volume": 0.192},
}

def _as_path(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _check_modalities(modalities: Sequence[int], num_channels: int) -> tuple[int, ...]:
    if isinstance(modalities, (int, str)) or len(modalities) == 0:
        raise ValueError(f"modalities must be a non-empty list of channel indices such as [0, 1], got {modalities!r}.")
    values = tuple(int(m) for m in modalities)
    if any(m < 0 or m >= num_channels for m in values) or len(set(values)) != len(values):
        names = ", ".join(f"{i} = {n}" for i, n in enumerate(ProstateTask.all_channel_names))
        raise ValueError(
            f"modalities must be distinct channel indices in 0..{num_channels - 1} ({names}), got {list(modalities)}."
        )
    return values


@register_task
class ProstateTask(SegmentationTask):
    """MSD Task05 prostate zones (PZ, TZ) from T2 and ADC volumes, with fixed 5-fold cross-validation.

    Splits (``datalist(root, split, fold=...)``):

    * ``"train"`` / ``"val"``: the training cases outside / inside fold ``fold`` (0 .. 4). ``fold="all"`` trains on
      every training case and validates on them as well (monitoring only, nnU-Net's "all" fold).
    * ``"all"``: every labelled training case.
    * ``"test"``: the unlabelled ``test`` images of ``dataset.json`` (``imagesTs``), images only.

    Folds (:meth:`folds`): the training cases sorted by name, shuffled with ``fold_seed`` and dealt into
    :data:`NUM_FOLDS` parts of sizes differing by at most one (MONAI's :func:`~monai.data.partition_dataset`). They
    depend on the case names only (not on the order of ``dataset.json``), so every run and every machine gets the
    same folds. Labelled items carry their fold under ``"fold"``.

    Args:
        modalities: input channels used, indices into ``("T2", "ADC")``; ``[0]`` trains a T2-only model. A 3D image
            counts as channel 0, so T2-only data may consist of 3D volumes.
        download: when :meth:`resolve_dataset` finds no dataset, download MSD Task05 with MONAI's
            :class:`~monai.apps.DecathlonDataset` into the ``dataset_dir`` (about 230 MB) instead of generating a
            demo sample.
        fold_seed: seed of the fold assignment.

    Raises:
        ValueError: invalid ``modalities``.
    """

    name = "prostate"
    title = "Prostate zones in multi-parametric MRI (MSD Task05)"
    class_names = ("background", "PZ", "TZ")
    activation = "softmax"
    channel_names = ("T2", "ADC")
    all_channel_names = ("T2", "ADC")
    spatial_dims = 3
    splits = ("train", "val", "all", "test")
    distance_unit = "mm"
    demo_image_size = (64, 64)
    demo_epochs = 2
    demo_sample = {"n_train": 8, "n_test": 2, "size": (60, 72, 8)}
    output_ext = ".nii.gz"

    def __init__(self, modalities: Sequence[int] = (0, 1), download: bool = False, fold_seed: int = 0) -> None:
        self.modalities = _check_modalities(modalities, len(self.all_channel_names))
        self.channel_names = tuple(self.all_channel_names[m] for m in self.modalities)
        self.download = bool(download)
        self.fold_seed = int(fold_seed)
        self._checked: dict[tuple, list[dict]] = {}

    # -------------------------------------------------------------------------------------------- layout

    def is_dataset(self, root: str | os.PathLike) -> bool:
        return (Path(root) / "dataset.json").is_file()

    def resolve_dataset(self, dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike) -> str:
        """``dataset_dir`` (or ``dataset_dir/Task05_Prostate``) if it holds the dataset; otherwise, with
        ``download``, the MSD archive downloaded there by MONAI's ``DecathlonDataset``; otherwise a demo sample
        (see :meth:`SegmentationTask.resolve_dataset`)."""
        root = Path(dataset_dir)
        for candidate in (root, root / MSD_TASK):
            if self.is_dataset(candidate):
                return str(candidate)
        if self.download:
            from monai.apps import DecathlonDataset

            root.mkdir(parents=True, exist_ok=True)
            logger.info("Downloading MSD %s into '%s'.", MSD_TASK, root)
            DecathlonDataset(
                root_dir=str(root), task=MSD_TASK, section="training", download=True, cache_rate=0.0, num_workers=0
            )
            return str(root / MSD_TASK)
        return super().resolve_dataset(dataset_dir, demo_dir)

    def training_cases(self, root: str | os.PathLike, validate: bool = True) -> list[dict]:
        """The labelled cases of ``dataset.json``'s ``training`` list, sorted by name, each with its ``"fold"``.

        With ``validate`` every file is checked once per task instance (see :meth:`check_datalist`).

        Raises:
            FileNotFoundError: no ``dataset.json`` in ``root``.
            ValueError: an unreadable ``dataset.json``, fewer cases than folds, or any problem found in the files
                (all listed in one error).
        """
        root_path = _as_path(root)
        key = (str(root_path), bool(validate))
        if key not in self._checked:
            items = self._load_list(root_path, "training")
            missing_label = [file_stem(d["image"]) for d in items if not d.get("label")]
            if missing_label:
                raise ValueError(
                    f"dataset.json of '{root_path}': training entries without a 'label': {missing_label}."
                )
            if len(items) < NUM_FOLDS:
                raise ValueError(
                    f"'{root_path}' lists {len(items)} training case(s); {NUM_FOLDS}-fold cross-validation needs at "
                    f"least {NUM_FOLDS}."
                )
            if validate:
                self.check_datalist(items, labelled=True, context=f"Invalid prostate dataset '{root_path}'")
            folds = self._assign_folds([d["name"] for d in items])
            self._checked[key] = [{**d, "fold": folds[d["name"]]} for d in items]
        return [dict(d) for d in self._checked[key]]

    def folds(self, root: str | os.PathLike) -> list[list[str]]:
        """Case names of each fold, ``folds(root)[k]`` being the validation cases of fold ``k`` (sorted)."""
        names = [d["name"] for d in self._load_list(_as_path(root), "training")]
        assignment = self._assign_folds(names)
        return [sorted(n for n, k in assignment.items() if k == fold) for fold in range(NUM_FOLDS)]

    def _assign_folds(self, names: Sequence[str]) -> dict[str, int]:
        from monai.data import partition_dataset

        ordered = sorted(names)
        parts = partition_dataset(
            ordered, num_partitions=NUM_FOLDS, shuffle=True, seed=self.fold_seed, even_divisible=False
        )
        return {name: k for k, part in enumerate(parts) for name in part}

    @staticmethod
    def check_fold(fold: int | str | None) -> int | str:
        """``fold`` as an int in ``0..NUM_FOLDS-1`` or the string ``"all"``.

        Raises:
            ValueError: anything else, naming the valid values.
        """
        if isinstance(fold, str) and fold.strip().lower() == "all":
            return "all"
        try:
            value = int(fold)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = -1
        if isinstance(fold, bool) or value not in range(NUM_FOLDS) or (isinstance(fold, float) and fold != value):
            raise ValueError(f"fold must be one of 0..{NUM_FOLDS - 1} or 'all', got {fold!r}.")
        return value

    def datalist(
        self, root: str | os.PathLike, split: str = "train", validate: bool = True, fold: int | str | None = None
    ) -> list[dict]:
        """The datalist of ``split`` (see the class description), absolute paths, sorted by name.

        Args:
            root: the folder holding ``dataset.json``.
            split: ``"train"``, ``"val"``, ``"all"`` or ``"test"``.
            validate: check every file first (see :meth:`check_datalist`).
            fold: ``0 .. 4`` or ``"all"``; required by ``"train"`` and ``"val"``.

        Raises:
            ValueError: an unknown split or fold, a missing fold, an empty test list, or problems in the files.
            FileNotFoundError: no ``dataset.json`` in ``root``.
        """
        self.check_split(split)
        if split == "test":
            items = self._load_list(_as_path(root), "test")
            if validate:
                self.check_datalist(items, labelled=False, context=f"Invalid prostate test images in '{root}'")
            return items
        cases = self.training_cases(root, validate=validate)
        if split == "all":
            return cases
        if fold is None:
            raise ValueError(f"The '{split}' split needs a fold: 0..{NUM_FOLDS - 1} or 'all' (train on every case).")
        fold = self.check_fold(fold)
        if fold == "all":
            return cases
        return [d for d in cases if (d["fold"] == fold) == (split == "val")]

    def inference_datalist(self, source: str | os.PathLike | Sequence, validate: bool = True) -> list[dict]:
        """Images to segment: a folder of NIfTI files (``.nii``, ``.nii.gz``), one such file, an MSD folder (its
        ``test`` list when it holds no NIfTI file itself), a JSON datalist (``test``, ``testing``, ``validation`` or
        ``training`` list, MSD style, paths relative to the file) or a list of paths / ``{"image": path}`` items.

        Raises:
            FileNotFoundError: ``source`` does not exist.
            ValueError: no image found, or images that do not fit ``modalities`` (all listed in one error).
        """
        if isinstance(source, (str, os.PathLike)):
            path = _as_path(source)
            if path.is_dir():
                files = sorted(
                    p for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(NIFTI_EXTENSIONS)
                )
                if files:
                    items = [{"image": str(p), "name": file_stem(p)} for p in files]
                elif self.is_dataset(path):
                    items = self._load_list(path, "test")
                else:
                    raise ValueError(f"No NIfTI image (.nii, .nii.gz) and no dataset.json found in '{path}'.")
            elif path.is_file() and path.name.lower().endswith(NIFTI_EXTENSIONS):  # one volume
                items = [{"image": str(path), "name": file_stem(path)}]
            elif path.is_file():
                content = self._read_json(path)
                key = next((k for k in ("test", "testing", "validation", "training") if k in content), None)
                if key is None:
                    raise ValueError(f"Datalist '{path}' has none of the lists 'test', 'testing', 'validation', "
                                     "'training'.")
                items = self._load_list(path.parent, key, path)
            else:
                raise FileNotFoundError(f"Inference input not found: '{path}'.")
        else:
            items = [
                {"image": str(_as_path(d["image"] if isinstance(d, Mapping) else d))} for d in source
            ]
            items = [{**d, "name": file_stem(d["image"])} for d in items]
        if not items:
            raise ValueError(f"No image to segment in {source}.")
        if validate:
            self.check_datalist(items, labelled=False, context="Invalid inference input")
        return items

    # ------------------------------------------------------------------------------------------ checks

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"Cannot read '{path}': {type(err).__name__}: {err}") from err
        if not isinstance(content, dict):
            raise ValueError(f"'{path}' must hold a JSON object (MSD dataset.json layout).")
        return content

    def _load_list(self, root: Path, key: str, json_file: Path | None = None) -> list[dict]:
        from monai.data import load_decathlon_datalist

        json_file = json_file or root / "dataset.json"
        if not json_file.is_file():
            raise FileNotFoundError(f"No dataset.json in '{root}': not an MSD-layout prostate dataset.")
        content = self._read_json(json_file)
        if key not in content:
            if key == "test":
                raise ValueError(f"'{json_file}' has no 'test' list (imagesTs): there are no test images to use.")
            raise ValueError(f"'{json_file}' has no '{key}' list.")
        if not content[key]:
            return []
        items = load_decathlon_datalist(json_file, is_segmentation=True, data_list_key=key, base_dir=root)
        out = []
        for d in items:
            item = {k: (str(_as_path(v)) if k in ("image", "label") else v) for k, v in d.items()}
            item["name"] = file_stem(item["image"])
            out.append(item)
        return sorted(out, key=lambda d: d["name"])

    def check_datalist(self, datalist: Sequence[Mapping], labelled: bool = True, context: str = "Invalid datalist"):
        """Check every image (and label) of ``datalist`` from the NIfTI headers, plus the label values.

        Checked: files exist and are readable NIfTI; an image is 4D with the channels in the last axis and enough
        of them for ``modalities`` (a 3D image only when ``modalities`` is ``[0]``); a label is 3D, has the image's
        shape and affine (within 1e-3) and holds values in ``{0, 1, 2}`` only (the one check that reads voxels, of
        the labels only). Labels holding background only are not errors: one ``UserWarning`` lists them.

        Returns:
            ``datalist`` as a list, unchanged.

        Raises:
            ValueError: one error listing every problem, each naming its file.
        """
        problems: list[str] = []
        empty: list[str] = []
        for item in datalist:
            problems += self._item_problems(item, labelled, empty)
        if empty:
            warnings.warn(
                f"{len(empty)} label volume(s) hold background only (check them if unexpected): {', '.join(empty)}",
                UserWarning,
                stacklevel=2,
            )
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ValueError(f"{context}: found {len(problems)} problem(s):\n{lines}")
        return list(datalist)

    def input_problems(self, path: str | os.PathLike) -> list[str]:
        """Why the inference input ``path`` cannot be segmented (empty when it can): the checks of
        :meth:`check_datalist` on the NIfTI header (the volume itself is decoded once, by the run)."""
        return self._item_problems({"image": os.fspath(path)}, labelled=False, empty=[])

    def _item_problems(self, item: Mapping, labelled: bool, empty: list[str]) -> list[str]:
        import nibabel as nib

        problems: list[str] = []
        need = max(self.modalities) + 1
        image = os.fspath(item["image"])
        headers = {}
        for kind, path in (("image", image), ("label", item.get("label"))):
            if kind == "label" and not labelled:
                continue
            if not path:
                problems.append(f"no label file given for image '{os.path.basename(image)}'")
                continue
            path = os.fspath(path)
            name = os.path.basename(path)
            if not os.path.isfile(path):
                problems.append(f"{kind} file not found: '{name}' ({path})")
                continue
            try:
                headers[kind] = nib.load(path)
                headers[kind].header.get_data_shape()
            except Exception as err:  # noqa: BLE001 - nibabel raises many exception types for bad files
                problems.append(f"unreadable {kind} file '{name}' ({path}): {type(err).__name__}: {err}")
        if "image" in headers:
            problems += self._image_problems(headers["image"], image, need)
        if "label" in headers:
            label_problems, is_empty = self._label_problems(headers["label"], headers.get("image"),
                                                            os.fspath(item["label"]))
            problems += label_problems
            if is_empty:
                empty.append(os.fspath(item["label"]))
        return problems

    def _image_problems(self, img, path: str, need: int) -> list[str]:
        name, shape = os.path.basename(path), tuple(img.shape)
        if len(shape) == 3:
            if need > 1:
                return [
                    f"image '{name}' is 3D {shape}, but modalities {list(self.modalities)} need a 4D image with "
                    f"{need} channels ({', '.join(self.all_channel_names[:need])}) in the last axis; for T2-only "
                    f"data pass modalities [0] ({path})"
                ]
            return []
        if len(shape) != 4:
            return [f"image '{name}' has shape {shape}: expected 4D (x, y, z, channels) or 3D ({path})"]
        if shape[3] < need:
            return [
                f"image '{name}' has {shape[3]} channel(s) {shape}, but modalities {list(self.modalities)} need at "
                f"least {need} ({path})"
            ]
        return []

    @staticmethod
    def _label_problems(lbl, img, path: str) -> tuple[list[str], bool]:
        """``(problems, whether the label holds background only)``."""
        name, shape = os.path.basename(path), tuple(lbl.shape)
        problems = []
        if len(shape) != 3:
            return [f"label '{name}' has shape {shape}: expected a 3D volume ({path})"], False
        if img is not None and len(img.shape) in (3, 4):
            if tuple(img.shape[:3]) != shape:
                problems.append(
                    f"shape mismatch: image '{os.path.basename(img.get_filename())}' is {tuple(img.shape[:3])} but "
                    f"label '{name}' is {shape}"
                )
            elif not np.allclose(img.affine, lbl.affine, rtol=0, atol=1e-3):
                problems.append(
                    f"affine mismatch: image '{os.path.basename(img.get_filename())}' and label '{name}' are on "
                    f"different grids (affines {np.round(img.affine, 4).tolist()} and "
                    f"{np.round(lbl.affine, 4).tolist()})"
                )
        try:
            values = np.unique(np.asanyarray(lbl.dataobj))
        except Exception as err:  # noqa: BLE001
            return problems + [f"unreadable label file '{name}' ({path}): {type(err).__name__}: {err}"], False
        unexpected = [v for v in values.tolist() if v not in (0, 1, 2)]
        if unexpected:
            shown = ", ".join(f"{v:g}" for v in unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
            problems.append(f"label '{name}' holds value(s) {shown} outside {{0, 1, 2}} (background, PZ, TZ) ({path})")
        return problems, bool(values.size) and not values.any()

    # ------------------------------------------------------------------------------------------ sample

    def make_sample(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 6,
        n_test: int = 0,
        size: tuple[int, int, int] = (40, 48, 6),
        spacing: tuple[float, float, float] = (0.6, 0.6, 3.6),
        channels: int = 2,
    ) -> str:
        """Write a generated MSD-layout prostate dataset.

        Each case is a volume of ``size`` voxels (x, y, z) with ``spacing`` mm, stored with an LPS-like affine
        (``diag(-sx, -sy, sz)``, not RAS, as scanners write them) and a random origin. A body ellipse (non-zero
        intensities) holds a gland made of two nested ellipsoids: the transition zone (label 2) inside the
        peripheral zone (label 1), each with its own T2 and ADC brightness plus noise and a random per-case
        intensity scale, so that a network can learn the zones. The first and last slices hold no gland.

        Args:
            root: output folder (created if needed).
            seed: seed of the generator; the output is fully deterministic.
            n_train: number of labelled cases (``imagesTr``, ``labelsTr``).
            n_test: number of unlabelled test images (``imagesTs``).
            size: volume size in voxels ``(x, y, z)``; ``z >= 3``.
            spacing: voxel size in mm.
            channels: 2 writes 4D images (T2, ADC in the last axis, as MSD), 1 writes 3D T2-only images.

        Returns:
            ``str(root)``.

        Raises:
            ValueError: ``channels`` other than 1 or 2, or a size too small.
        """
        import nibabel as nib

        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (3D T2) or 2 (4D T2 + ADC), got {channels}.")
        sx, sy, sz = (int(s) for s in size)
        if min(sx, sy) < 16 or sz < 3:
            raise ValueError(f"size must be at least (16, 16, 3) voxels, got {tuple(size)}.")
        root_path = Path(root)
        rng = np.random.default_rng(seed)
        spacing = tuple(float(s) for s in spacing)
        # intensities (T2, ADC) of body, PZ, TZ: PZ bright on both, TZ darker on ADC
        levels = {"body": (120.0, 60.0), "pz": (260.0, 150.0), "tz": (170.0, 80.0)}

        def case(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            xx, yy, zz = np.meshgrid(
                np.arange(sx) * spacing[0], np.arange(sy) * spacing[1], np.arange(sz) * spacing[2], indexing="ij"
            )
            cx, cy = sx * spacing[0] / 2 + rng.uniform(-2, 2), sy * spacing[1] / 2 + rng.uniform(-2, 2)
            cz = (sz - 1) * spacing[2] / 2
            body = ((xx - cx) / (0.46 * sx * spacing[0])) ** 2 + ((yy - cy) / (0.46 * sy * spacing[1])) ** 2 <= 1
            ax, ay = rng.uniform(0.25, 0.32) * sx * spacing[0], rng.uniform(0.22, 0.3) * sy * spacing[1]
            az = max((sz - 2.6) * spacing[2] / 2, spacing[2] * 0.8)
            gland = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 + ((zz - cz) / az) ** 2 <= 1
            shift = rng.uniform(0.1, 0.2) * ay  # TZ sits anterior to the PZ's centre
            tz = ((xx - cx) / (0.6 * ax)) ** 2 + ((yy - cy - shift) / (0.55 * ay)) ** 2 + (
                (zz - cz) / (0.8 * az)
            ) ** 2 <= 1
            label = np.zeros((sx, sy, sz), np.uint8)
            label[gland] = 1
            label[tz & gland] = 2
            scale = rng.uniform(0.8, 1.3)
            volumes = []
            for c in range(channels):
                img = np.zeros((sx, sy, sz), np.float32)
                img[body] = levels["body"][c]
                img[label == 1] = levels["pz"][c]
                img[label == 2] = levels["tz"][c]
                img = (img + body * rng.normal(0.0, 10.0, img.shape)) * scale
                volumes.append(np.clip(img, 0, None).astype(np.float32))
            image = np.stack(volumes, axis=-1) if channels == 2 else volumes[0]
            affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
            affine[:3, 3] = rng.uniform(-40, 40, size=3)
            return image, label, affine

        for folder in ("imagesTr", "labelsTr") + (("imagesTs",) if n_test else ()):
            (root_path / folder).mkdir(parents=True, exist_ok=True)
        training, test = [], []
        for i in range(n_train + n_test):
            image, label, affine = case(i)
            name = f"prostate_{i:02d}.nii.gz"
            if i < n_train:
                nib.save(nib.Nifti1Image(image, affine), root_path / "imagesTr" / name)
                nib.save(nib.Nifti1Image(label, affine), root_path / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            else:
                nib.save(nib.Nifti1Image(image, affine), root_path / "imagesTs" / name)
                test.append(f"./imagesTs/{name}")
        atomic_write_json(root_path / "dataset.json", {
            "name": "Prostate",
            "description": "GENERATED sample in the MSD Task05 layout (transfuse_monai.tasks.prostate)",
            "tensorImageSize": "4D" if channels == 2 else "3D",
            "modality": {str(c): self.all_channel_names[c] for c in range(channels)},
            "labels": {str(v): n for v, n in enumerate(self.class_names)},
            "numTraining": n_train,
            "numTest": n_test,
            "training": training,
            "test": test,
        })
        return str(root_path)


# ------------------------------------------------------------------------------------------------------ transforms


class SelectModalitiesd(MapTransform):
    """Keep the input channels ``modalities`` of channel-first volumes (after ``EnsureChannelFirstd``).

    A single-channel image (a 3D NIfTI) counts as channel 0, so ``modalities=[0]`` accepts 3D T2 volumes as well as
    4D T2 + ADC ones. The geometry is unchanged (nothing to invert).

    Args:
        keys: keys of the images.
        modalities: indices of the channels to keep, in order.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: empty or negative ``modalities``; when called, an image with too few channels (naming the file).
    """

    def __init__(self, keys: KeysCollection, modalities: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(modalities, (int, str)) or len(modalities) == 0 or any(int(m) < 0 for m in modalities):
            raise ValueError(f"modalities must be a non-empty list of channel indices, got {modalities!r}.")
        self.modalities = [int(m) for m in modalities]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] <= max(self.modalities):
                meta = getattr(img, "meta", None) or {}
                source = meta.get("filename_or_obj", "")
                what = "a 3D image (1 channel)" if img.shape[0] == 1 else f"{img.shape[0]} channels"
                raise ValueError(
                    f"'{key}'{f' ({source})' if source else ''} has {what}, but modalities {self.modalities} need "
                    f"{max(self.modalities) + 1}; pass modalities [0] for T2-only data."
                )
            if self.modalities != list(range(img.shape[0])):
                d[key] = img[self.modalities]
        return d


# ------------------------------------------------------------------------------------------------------ writing


# ------------------------------------------------------------------------------------------------------ handlers


def write_mr_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    description: str,
    study: dict,
    number: int,
    modality: str = "MR",
    pixel_spacing: bool = True,
    plane: str = "axial",
) -> list[Path]:
    """Write ``volume`` ``(columns, rows, slices)`` (integers) as a DICOM series, one file per slice, as a scanner
    exports it (for samples, tests and the Deploy benchmark): axial, or sagittal (rows along the patient's feet,
    columns along posterior, slices along left).

    Args:
        folder: where the files go (``s<number>_<slice>.dcm``).
        volume: stored values, ``(columns, rows, slices)``.
        spacing: voxel size in mm along the three axes of ``volume``.
        origin_lps: position (LPS, mm) of the first voxel of the first slice.
        description: ``SeriesDescription``.
        study: ``{"uid": StudyInstanceUID, "frame_of_reference": FrameOfReferenceUID}`` shared by the study's series.
        number: ``SeriesNumber``.
        modality: ``Modality`` (``MR``; ``CT`` writes CT Image Storage).
        pixel_spacing: write ``PixelSpacing`` (False: a series without it, to test the checks).
        plane: ``"axial"`` or ``"sagittal"``.

    Returns:
        The files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    series_uid, files = generate_uid(), []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Prostate", "P1", "", "M"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study["uid"], "20260101", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyDescription = "", "", "Prostate MRI"
        ds.FrameOfReferenceUID = study["frame_of_reference"]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
        ds.Modality, ds.InstanceNumber, ds.ImageType = modality, k + 1, ["ORIGINAL", "PRIMARY", plane.upper()]
        if plane == "axial":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]),
                                       float(origin_lps[2] + k * spacing[2])]
        elif plane == "sagittal":
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [float(origin_lps[0] + k * spacing[2]), float(origin_lps[1]),
                                       float(origin_lps[2])]
        else:
            raise ValueError(f"plane must be 'axial' or 'sagittal', got {plane!r}")
        if pixel_spacing:
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype(np.uint16).tobytes()
        path = Path(folder) / f"s{number:02d}_{k:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def class_output(index: int):
    """An ignite ``output_transform`` giving ``(preds, labels)`` of one class channel of one-hot decollated outputs,
    for a per-class ``MeanDice`` (``include_background=True`` on that one channel)."""
    from monai.handlers import from_engine

    select = from_engine(["pred", "label"])

    def transform(output):
        preds, labels = select(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return transform



def _fold_values(eval_dir: Path, report_prefix: str, speed_prefix: str) -> dict[str, float]:
    report = eval_dir / f"{report_prefix}summary.json"
    if not report.is_file():
        raise FileNotFoundError(f"No evaluation summary '{report.name}' in '{eval_dir}': evaluate this fold first.")
    summary = json.loads(report.read_text())
    if not summary:
        raise ValueError(f"'{report}' is empty.")
    values = summary.get("all images") or list(summary.values())[-1]
    out = {k: (float("nan") if v is None else float(v)) for k, v in values.items()}
    speed = eval_dir / f"{speed_prefix}summary.json"
    if speed.is_file():
        timing = json.loads(speed.read_text())
        out["seconds_per_volume"] = float(timing.get("seconds_per_volume", float("nan")))
        if "parameters" in timing:
            out["parameters"] = float(timing["parameters"])
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0


def aggregate_folds(
    eval_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    metrics: Sequence[str] = ("dice_PZ", "dice_TZ", "dice", "hd95", "asd"),
    report_prefix: str = "segmentation_",
    speed_prefix: str = "seconds_",
    method: str = "TransFuse-S (this bundle)",
) -> dict[str, Any]:
    """Cross-validation results in the layout of the paper's Table 4: PZ, TZ and mean Dice as mean +- standard
    deviation over the folds (sample standard deviation, ``ddof=1``), parameters and seconds per volume, beside the
    paper's figures (:data:`PAPER_TABLE4`).

    Each folder of ``eval_dirs`` is one fold's evaluation output (``evaluate.json`` with ``--fold k``): the
    per-class report ``<report_prefix>summary.json`` and the timing ``<speed_prefix>summary.json``.

    Args:
        eval_dirs: the folds' evaluation folders.
        output_dir: where to write ``cross_validation.json`` and ``cross_validation.md`` (atomically); None writes
            nothing.
        metrics: the summary keys reported per fold and over the folds.
        report_prefix: prefix of the evaluation report files.
        speed_prefix: prefix of the timing files.
        method: name of this model's row.

    Returns:
        ``{"folds": {dir name: values}, "mean": {...}, "std": {...}, "markdown": table}``.

    Raises:
        ValueError: no folder given.
        FileNotFoundError: a folder without an evaluation summary.
    """
    if not eval_dirs:
        raise ValueError("aggregate_folds needs the evaluation folder of at least one fold.")
    folds = {Path(d).name or str(d): _fold_values(Path(d), report_prefix, speed_prefix) for d in eval_dirs}
    keys = [*metrics, "seconds_per_volume", "parameters"]
    mean, std = {}, {}
    for key in keys:
        mean[key], std[key] = _mean_std([v.get(key, float("nan")) for v in folds.values()])

    def cell(m: float, s: float | None = None, digits: int = 4) -> str:
        if math.isnan(m):
            return "n/a"
        return f"{m:.{digits}f}" + (f" +- {s:.{digits}f}" if s is not None and not math.isnan(s) else "")

    params = mean["parameters"]
    rows = [
        "| method | params (M) | PZ Dice | TZ Dice | mean Dice | HD95 (mm) | ASD (mm) | s / volume |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ref in PAPER_TABLE4.items():
        rows.append(
            f"| {name} | n/a | {cell(ref['dice_PZ'])} | {cell(ref['dice_TZ'])} | {cell(ref['dice'])} | n/a | n/a | "
            f"{cell(ref['seconds_per_volume'], digits=3)} |"
        )
    rows.append(
        f"| {method}, {len(folds)} fold(s) | {cell(params / 1e6, digits=1) if not math.isnan(params) else 'n/a'} | "
        + " | ".join(cell(mean.get(k, float("nan")), std.get(k)) for k in ("dice_PZ", "dice_TZ", "dice", "hd95", "asd"))
        + f" | {cell(mean['seconds_per_volume'], std['seconds_per_volume'], digits=3)} |"
    )
    per_fold = ["", "| fold | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, values in folds.items():
        per_fold.append(f"| {name} | " + " | ".join(cell(values.get(k, float("nan"))) for k in keys) + " |")
    markdown = "\n".join(rows + per_fold)
    result = {"folds": folds, "mean": mean, "std": std, "markdown": markdown}
    if output_dir is not None:
        out = Path(output_dir)

        def safe(obj):
            if isinstance(obj, Mapping):
                return {k: safe(v) for k, v in obj.items()}
            return None if isinstance(obj, float) and math.isnan(obj) else obj

        atomic_write_json(out / "cross_validation.json", safe({k: v for k, v in result.items() if k != "markdown"}))
        atomic_write_text(out / "cross_validation.md", markdown + "\n")
    return result
