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

The bundle's mechanisms live in their layers: the channel selection
(:class:`~transfuse_monai.transforms.SelectModalitiesd`), class-balanced 2D slices of a volume
(:class:`~transfuse_monai.transforms.RandClassSlicesd`), the seconds-per-volume handler
(:class:`~transfuse_monai.handlers.SecondsPerVolume`) and the cross-validation table in the paper's Table 4 layout
(:func:`~transfuse_monai.handlers.aggregate_folds`, with :data:`PAPER_TABLE4` as its reference rows).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from transfuse_monai.data.checks import VolumeCheck, check_volume, raise_problems
from transfuse_monai.data.datalists import assign_folds, decathlon_items, read_json_datalist
from transfuse_monai.data.formats import NIFTI_EXTENSIONS, file_stem
from transfuse_monai.data.synthetic import draw_prostate
from transfuse_monai.tasks.base import SegmentationTask, register_task
from transfuse_monai.utils import absolute_path, atomic_write_json

__all__ = ["MSD_TASK", "NUM_FOLDS", "PAPER_TABLE4", "ProstateTask"]

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
        root_path = absolute_path(root)
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
            folds = assign_folds([d["name"] for d in items], NUM_FOLDS, self.fold_seed)
            self._checked[key] = [{**d, "fold": folds[d["name"]]} for d in items]
        return [dict(d) for d in self._checked[key]]

    def folds(self, root: str | os.PathLike) -> list[list[str]]:
        """Case names of each fold, ``folds(root)[k]`` being the validation cases of fold ``k`` (sorted)."""
        names = [d["name"] for d in self._load_list(absolute_path(root), "training")]
        assignment = assign_folds(names, NUM_FOLDS, self.fold_seed)
        return [sorted(n for n, k in assignment.items() if k == fold) for fold in range(NUM_FOLDS)]

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
            items = self._load_list(absolute_path(root), "test")
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
            path = absolute_path(source)
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
                content = read_json_datalist(path)
                key = next((k for k in ("test", "testing", "validation", "training") if k in content), None)
                if key is None:
                    raise ValueError(f"Datalist '{path}' has none of the lists 'test', 'testing', 'validation', "
                                     "'training'.")
                items = self._load_list(path.parent, key, path)
            else:
                raise FileNotFoundError(f"Inference input not found: '{path}'.")
        else:
            items = [
                {"image": str(absolute_path(d["image"] if isinstance(d, Mapping) else d))} for d in source
            ]
            items = [{**d, "name": file_stem(d["image"])} for d in items]
        if not items:
            raise ValueError(f"No image to segment in {source}.")
        if validate:
            self.check_datalist(items, labelled=False, context="Invalid inference input")
        return items

    # ------------------------------------------------------------------------------------------ checks

    @staticmethod
    def _load_list(root: Path, key: str, json_file: Path | None = None) -> list[dict]:
        """The items of list ``key`` of ``dataset.json`` (or ``json_file``), absolute paths, sorted by name."""
        json_file = json_file or root / "dataset.json"
        if not json_file.is_file():
            raise FileNotFoundError(f"No dataset.json in '{root}': not an MSD-layout prostate dataset.")
        if key == "test" and key not in read_json_datalist(json_file):
            raise ValueError(f"'{json_file}' has no 'test' list (imagesTs): there are no test images to use.")
        return sorted(decathlon_items(json_file, key, base_dir=root), key=lambda d: d["name"])

    def check_datalist(self, datalist: Sequence[Mapping], labelled: bool = True, context: str = "Invalid datalist"):
        """Check every image (and label) of ``datalist`` from the NIfTI headers, plus the label values.

        Checked (:func:`~transfuse_monai.data.checks.check_volume`): files exist and are readable NIfTI; an image is
        4D with the channels in the last axis and enough of them for ``modalities`` (a 3D image only when
        ``modalities`` is ``[0]``); a label is 3D, has the image's shape and affine (within 1e-3) and holds values in
        ``{0, 1, 2}`` only. Labels holding background only are not errors: one ``UserWarning`` lists them.

        Returns:
            ``datalist`` as a list, unchanged.

        Raises:
            ValueError: one error listing every problem, each naming its file.
        """
        problems: list[str] = []
        empty: list[str] = []
        for item in datalist:
            found = self._check(item, labelled)
            problems += found.problems
            if found.empty:
                empty.append(os.fspath(item["label"]))
        if empty:
            warnings.warn(
                f"{len(empty)} label volume(s) hold background only (check them if unexpected): {', '.join(empty)}",
                UserWarning,
                stacklevel=2,
            )
        raise_problems(problems, context)
        return list(datalist)

    def input_problems(self, path: str | os.PathLike) -> list[str]:
        """Why the inference input ``path`` cannot be segmented (empty when it can): the checks of
        :meth:`check_datalist` on the NIfTI header (the volume itself is decoded once, by the run)."""
        return self._check({"image": os.fspath(path)}, labelled=False).problems

    def _check(self, item: Mapping, labelled: bool) -> VolumeCheck:
        need = max(self.modalities) + 1
        return check_volume(
            item["image"], item.get("label"), labelled=labelled, channels=need, num_classes=self.num_classes,
            channel_names=self.all_channel_names, needed_by=f"modalities {list(self.modalities)}",
            advice="; for T2-only data pass modalities [0]",
        )

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

        Each case is a volume of ``size`` voxels (x, y, z) with ``spacing`` mm drawn by
        :func:`~transfuse_monai.data.synthetic.draw_prostate` (peripheral and transition zones in a body ellipse,
        an LPS-like affine with a random origin, as scanners write them).

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
        for folder in ("imagesTr", "labelsTr") + (("imagesTs",) if n_test else ()):
            (root_path / folder).mkdir(parents=True, exist_ok=True)
        training, test = [], []
        for i in range(n_train + n_test):
            image, label, affine = draw_prostate(rng, (sx, sy, sz), spacing, channels)
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
