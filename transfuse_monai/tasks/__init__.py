"""Segmentation tasks: one declaration per dataset (classes, channels, layout and splits, checks, sample parameters).

``get_task(name)`` returns the task a bundle declares in its config (``"task": "$transfuse_monai.tasks.get_task('polyp')"``).
Adding a task: write ``tasks/<name>.py`` with a :class:`SegmentationTask` subclass decorated with
:func:`register_task`; every module of this package is imported (and so registered) with the package.
"""

import importlib
import pkgutil

from transfuse_monai.tasks.base import (
    DEMO_MARKER,
    SegmentationTask,
    available_tasks,
    get_task,
    is_demo_datalist,
    is_demo_dataset,
    register_task,
)

# the tasks of this repository, by name for ``from transfuse_monai.tasks import PolypTask``
from transfuse_monai.tasks.polyp import PRANET_TEST_SETS, PolypTask
from transfuse_monai.tasks.isic2017 import ISIC2017_SPLITS, ISIC2017Task
from transfuse_monai.tasks.hip import HIP_CLASSES, HipTask
from transfuse_monai.tasks.prostate import MSD_TASK, NUM_FOLDS, ProstateTask

for _module in pkgutil.iter_modules(__path__):  # importing a task module registers its task
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEMO_MARKER",
    "SegmentationTask",
    "available_tasks",
    "get_task",
    "is_demo_datalist",
    "is_demo_dataset",
    "register_task",
    "PRANET_TEST_SETS",
    "PolypTask",
    "ISIC2017_SPLITS",
    "ISIC2017Task",
    "HIP_CLASSES",
    "HipTask",
    "MSD_TASK",
    "NUM_FOLDS",
    "ProstateTask",
]
