"""MONAI Label app that serves this repository's bundles (inference and training through MONAI Label's bundle tasks).

Run from the MONAI Label server environment (``bash monailabel_app/setup_server_env.sh``)::

    monailabel start_server --app <copy of this folder> --studies /data/images --conf models polyp,isic2017,hip,prostate

``--conf models`` names bundle folders under ``<app>/model/`` (``--conf bundles_dir DIR`` to keep them elsewhere),
each a copy of ``bundles/<name>`` with its weights at ``models/model.pt``. The app never downloads anything: no model
zoo look-up and no SAM2, so it starts offline.

Active learning: ``epistemic`` scoring runs the model of ``--conf epistemic_model`` (default: the first of ``models``)
``epistemic_samples`` times per unlabelled image with Monte Carlo dropout (rate ``epistemic_dropout``; BatchNorm and
everything else in inference mode, the final head's probabilities) and stores MONAI Label's ``epistemic_entropy`` score
in the datastore; the ``epistemic`` strategy serves the unlabelled image with the highest score (``random`` and
``first`` are there too). ``--conf epistemic_samples 0`` turns scoring off.

Labels: MONAI Label writes a label in the request's ``result_extension`` and, without one, in the input image's
format, which for endoscopy and dermoscopy frames is JPEG: a lossy label whose pixels are no longer the class values.
Here a 2D model's label defaults to a uint8 PNG instead, and a volume model's (``dimension`` 3, e.g. prostate) to a
uint8 label in the input's format (a NIfTI volume for a NIfTI input, on the input's grid and affine), so a client that
sends only the image gets values in ``{0} | channel_def`` keys; a request that sets ``result_extension`` /
``result_dtype`` still gets what it asks for.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring
from monailabel.utils.others.generic import strtobool

import transfuse_monai

from lib.epistemic import EPISTEMIC_DEFAULTS, MCDropoutBundleInferTask
from lib.train import FineTuneBundleTrainTask

logger = logging.getLogger(__name__)

LABEL_EXTENSION_2D = ".png"
LABEL_DTYPE = "uint8"


class LosslessLabelBundleInferTask(BundleInferTask):
    """``BundleInferTask`` whose labels are uint8 class values, 2D ones as PNGs, unless the request sets
    ``result_dtype`` / ``result_extension``.

    Volumes (``dimension`` 3, from a 3-element ``spatial_shape`` in the bundle's ``metadata.json``) keep MONAI Label's
    default format, the input's (e.g. NIfTI), with uint8 voxels instead of the float32 of the argmax.
    """

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        if self.dimension == 2 and extension is None and not data.get("result_extension"):
            extension = LABEL_EXTENSION_2D
        if dtype is None and not data.get("result_dtype"):
            dtype = LABEL_DTYPE
        return super().writer(data, extension=extension, dtype=dtype)


def bundle_folders(app_dir: str, conf: dict[str, str]) -> dict[str, str]:
    """Bundle folder of each name in ``conf["models"]`` (comma-separated), under ``conf["bundles_dir"]`` (default
    ``<app_dir>/model``); each must hold ``configs/inference.json`` and ``models/model.pt``.

    Raises:
        ValueError: when no model is named, or a named bundle folder or its weights are missing.
    """
    names = [n.strip() for n in conf.get("models", "").split(",") if n.strip()]
    if not names:
        raise ValueError("no bundle to serve: start the server with --conf models <name>[,<name>...]")
    root = os.path.abspath(conf.get("bundles_dir") or os.path.join(app_dir, "model"))
    folders = {}
    for name in names:
        path = os.path.join(root, name)
        for required in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
            if not os.path.isfile(os.path.join(path, required)):
                raise ValueError(
                    f"bundle '{name}': {os.path.join(path, required)} is missing; copy bundles/{name} to {path} "
                    "and put its trained weights at models/model.pt"
                )
        folders[name] = path
    return folders


class TransFuseApp(MONAILabelApp):
    """Serves the bundles named by ``--conf models`` (see the module docstring); ``--conf skip_trainers true`` serves
    inference only."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.models = bundle_folders(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="TransFuse bundles",
            description="TransFuse segmentation bundles (transfuse_monai) served through MONAI Label's bundle tasks",
            version=transfuse_monai.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            task = LosslessLabelBundleInferTask(path, self.conf)
            if not task.is_valid():
                raise ValueError(f"bundle '{name}' at {path} did not load in MONAI Label (see the log above)")
            logger.info(f"+++ Adding Inferer:: {name} => {path}")
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: dict[str, TrainTask] = {}
        for name, path in self.models.items():
            task = FineTuneBundleTrainTask(path, self.conf)
            if task.is_valid():
                logger.info(f"+++ Adding Trainer:: {name} => {path}")
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First(), "epistemic": Epistemic()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        name = self.conf.get("epistemic_model") or next(iter(self.models))
        if name not in self.models:
            raise ValueError(f"--conf epistemic_model {name}: not one of the served models {sorted(self.models)}")
        dimension = self._infers[name].dimension if name in self._infers else 2
        defaults = EPISTEMIC_DEFAULTS[3 if dimension == 3 else 2]
        samples = int(self.conf.get("epistemic_samples", defaults["samples"]))
        if samples <= 0:
            return {}
        dropout = float(self.conf.get("epistemic_dropout", defaults["dropout"]))
        task = MCDropoutBundleInferTask(self.models[name], self.conf, dropout=dropout)
        if not task.is_valid():
            raise ValueError(f"bundle '{name}' at {self.models[name]} did not load for epistemic scoring")
        logger.info(f"+++ Adding Scoring Method:: epistemic => {name}: {samples} passes, dropout {dropout}")
        return {"epistemic": EpistemicScoring(task, simulation_size=max(2, samples))}
