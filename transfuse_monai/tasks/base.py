# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The task interface: everything a bundle needs to know about one dataset, behind one small class.

A *task* (polyp, ISIC 2017, prostate MRI, hip X-ray, ...) is a subclass of :class:`SegmentationTask` in its own
module of :mod:`transfuse_monai.tasks`, registered with :func:`register_task`. It declares its classes (the mask
value of each), its activation and input channels as class attributes (configuration as data), and implements three
methods: :meth:`~SegmentationTask.is_dataset` (does a folder hold this dataset's layout?),
:meth:`~SegmentationTask.datalist` (the validated datalist of one split) and :meth:`~SegmentationTask.make_sample`
(a small generated dataset in the same layout, for demos and tests); :meth:`~SegmentationTask.inference_datalist`
(the images to segment from a folder, a file or a JSON list) has a default for 2D pictures. Everything generic (pairing images with masks,
validation, splits, demo fallback, atomic writing) lives in shared helpers that the task modules call.

Bundles reach their task through one config id::

    "task": "$transfuse_monai.tasks.get_task('polyp')",
    "data_root": "$@task.resolve_dataset(@dataset_dir, @output_dir + '/demo_data')",
    "datalist": "$@task.datalist(@data_root, 'train')",
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from transfuse_monai.utils import atomic_write_text

__all__ = [
    "DEMO_MARKER",
    "SegmentationTask",
    "register_task",
    "get_task",
    "available_tasks",
    "is_demo_dataset",
    "is_demo_datalist",
]

logger = logging.getLogger(__name__)

#: File written at the root of a generated demo dataset.
DEMO_MARKER = "GENERATED_DEMO_DATA.txt"

_ACTIVATIONS = ("sigmoid", "softmax")
_REGISTRY: dict[str, type[SegmentationTask]] = {}


class SegmentationTask:
    """One segmentation dataset and how TransFuse models it.

    Subclasses set the class attributes and implement :meth:`is_dataset`, :meth:`datalist` and
    :meth:`make_sample`; a variant of a task (another layout, another label set) is a small subclass of it.

    Class attributes:
        name: registry name, also the bundle folder's name (``"polyp"``).
        title: human-readable name (``"Polyp segmentation (PraNet split)"``).
        class_names: name of each class, indexed by its value in the label maps the transforms produce
            (index 0 is ``"background"``).
        activation: ``"sigmoid"`` (binary or multi-label: one output channel per foreground class) or
            ``"softmax"`` (multi-class: one output channel per class, background included).
        channel_names: name of each input channel of the network (``("R", "G", "B")``, ``("T2", "ADC")``).
        spatial_dims: dimensionality of the stored images: 2 (pictures, radiographs) or 3 (volumes sliced for the
            2D network).
        splits: the split names :meth:`datalist` accepts.
        demo_image_size: network input size of demo runs on the generated sample.
        demo_epochs: epochs of demo runs.
        distance_unit: unit of the contour distances of evaluations: ``"mm"`` (the images carry their pixel or voxel
            spacing) or ``"px"`` (photographs and endoscopy frames, which have none).
        demo_sample: keyword arguments of :meth:`make_sample` for the demo sample that :meth:`resolve_dataset`
            generates when no dataset is found.
        output_ext: extension of the files the bundle's inference writes (``".png"``, ``".nii.gz"``), used to find
            the inputs whose output already exists (:class:`~transfuse_monai.data.InferenceInputs`).
        exclude_suffixes: file stems ending so in an image folder are not images (ISIC's ``_superpixels`` maps).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    class_names: ClassVar[tuple[str, ...]] = ("background", "foreground")
    activation: ClassVar[str] = "sigmoid"
    channel_names: ClassVar[tuple[str, ...]] = ("R", "G", "B")
    spatial_dims: ClassVar[int] = 2
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    demo_image_size: ClassVar[tuple[int, ...]] = (96, 96)
    demo_epochs: ClassVar[int] = 2
    distance_unit: ClassVar[str] = "mm"
    demo_sample: ClassVar[dict] = {}
    output_ext: ClassVar[str] = ".png"
    exclude_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.activation not in _ACTIVATIONS:
            raise TypeError(f"{cls.__name__}.activation must be one of {_ACTIVATIONS}, got '{cls.activation}'.")
        if len(cls.class_names) < 2 or cls.class_names[0] != "background":
            raise TypeError(
                f"{cls.__name__}.class_names must start with 'background' and name at least one class, "
                f"got {cls.class_names}."
            )
        if cls.distance_unit not in ("mm", "px"):
            raise TypeError(f"{cls.__name__}.distance_unit must be 'mm' or 'px', got '{cls.distance_unit}'.")
        if len(set(cls.class_names)) != len(cls.class_names):
            raise TypeError(f"{cls.__name__}.class_names has duplicates: {cls.class_names}.")

    # ----------------------------------------------------------------------------------------- derived properties

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def foreground(self) -> tuple[str, ...]:
        """The foreground class names, in mask-value order."""
        return self.class_names[1:]

    @property
    def in_channels(self) -> int:
        """Number of network input channels."""
        return len(self.channel_names)

    @property
    def out_channels(self) -> int:
        """Number of network output channels: one per foreground class with sigmoid, one per class with softmax."""
        return self.num_classes if self.activation == "softmax" else self.num_classes - 1

    def channel_def(self) -> dict[str, str]:
        """The output ``channel_def`` of ``metadata.json``: mask value -> class name, background included.

        MONAI Label reads it as ``labels = {name: int(value)}`` without "background", so the keys must be the
        values in the masks the bundle writes (polyp = 1), whatever the number of output channels."""
        return {str(value): name for value, name in enumerate(self.class_names)}

    def labels(self) -> dict[str, int]:
        """Foreground class name -> mask value (MONAI Label's ``labels``)."""
        return {name: value for value, name in enumerate(self.class_names) if value > 0}

    # ------------------------------------------------------------------------------------------ to implement

    def is_dataset(self, root: str | os.PathLike) -> bool:
        """Whether ``root`` holds this task's dataset layout (cheap: folder checks only, no file is opened)."""
        raise NotImplementedError

    def datalist(self, root: str | os.PathLike, split: str = "train", validate: bool = True) -> list[dict]:
        """The datalist of ``split``: ``[{"image": path, "label": path, "name": stem, ...}]``, absolute paths.

        With ``validate`` every file is checked (exists, readable, image and label agree) and all problems are
        raised together in one ``ValueError`` naming each file, before any training starts."""
        raise NotImplementedError

    def make_sample(self, root: str | os.PathLike, *, seed: int = 0, **kwargs) -> str:
        """Write a small generated dataset in this task's layout to ``root``; returns ``str(root)``."""
        raise NotImplementedError

    def inference_datalist(self, source: str | os.PathLike | Sequence) -> list[dict]:
        """The items ``[{"image": path}, ...]`` to segment from ``source``: a folder of images, one image, a JSON
        datalist or a list (:func:`~transfuse_monai.data.image_datalist`; a folder's files whose stem ends with one
        of :attr:`exclude_suffixes` are skipped). Tasks reading other formats override it.

        Raises:
            FileNotFoundError: ``source`` or a listed image does not exist.
            ValueError: no image found.
        """
        from transfuse_monai.data.datalists import image_datalist

        return image_datalist(source, exclude_suffixes=self.exclude_suffixes)

    def load_transforms(self, keys: Sequence[str] = ("image", "label")) -> list:
        """The MONAI transforms that load one labelled 2D item as the task stores it: a channel-first image with
        :attr:`in_channels` channels and a ``(1, H, W)`` class-index label (:class:`~transfuse_monai.transforms.
        ClassIndexd`), for consumers outside the bundles (``python -m transfuse_monai.nnunet convert``).

        The default reads pictures (PNG, JPEG, BMP, TIFF) with MONAI's ``PILReader``; tasks storing other formats
        override it (the hip task reads DICOM and NIfTI radiographs with their pixel spacing).

        Args:
            keys: the keys of the image and of the label.
        """
        from monai.transforms import EnsureChannelFirstd, LoadImaged

        from transfuse_monai.transforms import ClassIndexd, EnsureNumChannelsd

        image, label = keys
        return [
            LoadImaged(keys=[image, label], reader="PILReader", reverse_indexing=False, image_only=True),
            EnsureChannelFirstd(keys=[image, label]),
            EnsureNumChannelsd(keys=image, num_channels=self.in_channels),
            ClassIndexd(keys=label, num_classes=self.num_classes),
        ]

    def input_problems(self, path: str | os.PathLike) -> list[str]:
        """Why the inference input ``path`` cannot be segmented (an empty list when it can), from one read of the
        file: inference skips such inputs and lists them in its report instead of failing inside a DataLoader worker.

        The default decodes a 2D picture (:func:`~transfuse_monai.data.checks.check_picture` with the network's
        input channels); tasks reading other formats override it."""
        from transfuse_monai.data.checks import check_picture

        return check_picture(path, "image", channels=self.in_channels).problems

    # -------------------------------------------------------------------------------------------- shared

    def check_split(self, split: str) -> None:
        """Raise a ``ValueError`` naming the valid splits when ``split`` is not one of them."""
        if split not in self.splits:
            raise ValueError(f"Unknown {self.name} split '{split}'; expected one of {list(self.splits)}.")

    def resolve_dataset(self, dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike) -> str:
        """``dataset_dir`` if it holds this task's dataset; otherwise a generated demo sample in ``demo_dir``
        (written once, marked with :data:`DEMO_MARKER`), with a loud warning that the run is a demo."""
        root = Path(dataset_dir)
        if self.is_dataset(root):
            return str(root)
        demo = Path(demo_dir)
        if not (demo / DEMO_MARKER).is_file():
            self.make_sample(demo, **{"seed": 0, **self.demo_sample})
            atomic_write_text(
                demo / DEMO_MARKER, f"Generated {self.name} sample: '{root}' held no {self.name} dataset.\n"
            )
        message = (
            f"dataset_dir '{root}' holds no {self.name} dataset: running a DEMO on a small generated sample in "
            f"'{demo}'. Results are meaningless; pass --dataset_dir to train on real data."
        )
        logger.warning(message)
        print(f"WARNING: {message}", flush=True)
        return str(demo)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, classes={list(self.class_names)}, "
            f"activation={self.activation!r}, in_channels={self.in_channels}, spatial_dims={self.spatial_dims})"
        )


def register_task(cls: type[SegmentationTask]) -> type[SegmentationTask]:
    """Class decorator adding a task to the registry under ``cls.name`` (a duplicate name is an error)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty 'name' to be registered.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"Task name '{cls.name}' is already registered by {_REGISTRY[cls.name].__name__}.")
    _REGISTRY[cls.name] = cls
    return cls


def get_task(name: str, **kwargs) -> SegmentationTask:
    """An instance of the registered task ``name`` (``kwargs`` go to its constructor)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown task '{name}'; registered tasks: {available_tasks()}.")
    return _REGISTRY[name](**kwargs)


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


def is_demo_dataset(dataset_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` is a generated demo sample (it holds :data:`DEMO_MARKER`)."""
    return (Path(dataset_dir) / DEMO_MARKER).is_file()


def is_demo_datalist(datalist: Sequence[Mapping], key: str = "image", levels: int = 4) -> bool:
    """Whether a datalist's items come from a generated demo sample (:data:`DEMO_MARKER` in a parent folder).

    Bundles base their demo settings on the data actually used, so a datalist given from outside (MONAI Label's
    ``train#dataset#data`` override, say) never switches a run into demo mode.
    """
    if not datalist:
        return False
    parent = Path(str(datalist[0][key])).resolve().parent
    return any((folder / DEMO_MARKER).is_file() for folder in [parent, *parent.parents][:levels])
