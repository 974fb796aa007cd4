"""Training task of the app: MONAI Label's ``BundleTrainTask`` for this repository's bundles. Kept apart from
``main.py`` so that it imports with the bundle tasks' requirements alone (``requirements-monailabel.txt``)."""

from __future__ import annotations

import logging
import os

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["FineTuneBundleTrainTask"]

logger = logging.getLogger(__name__)

#: the bundles' switch for ImageNet initialisation of the two branches (``train.json``)
IMAGENET_KEY = "pretrained"


class FineTuneBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` that fine-tunes the served weights without ImageNet files.

    A train request with ``pretrained`` true (MONAI Label's default) continues from the served weights,
    ``models/<model_filename>``. MONAI Label loads them over the network the bundle builds, so the bundle's own
    ImageNet initialisation (``pretrained`` in ``train.json``) would be overwritten anyway. It is skipped: training
    over HTTP then needs no ImageNet files and no download. A request with ``pretrained`` false trains from the
    bundle's initialisation as ``train.json`` states it (ImageNet by default). MONAI Label's own task fails on such a
    request, as it checks a path of ``None``.
    """

    _fine_tune = False

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        self._fine_tune = bool(pretrained) and os.path.isfile(model_pytorch)
        if self._fine_tune:  # MONAI Label's CheckpointLoader of the served weights
            logger.info(f"Fine-tuning from {model_pytorch}; the bundle's ImageNet initialisation is skipped")
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
        else:
            logger.info(
                f"Training from the bundle's initialisation ({IMAGENET_KEY}={self.bundle_config.get(IMAGENET_KEY)} in "
                f"train.json): the request has pretrained={pretrained} and {model_pytorch} "
                f"{'exists' if os.path.isfile(model_pytorch) else 'does not exist'}"
            )

    def _update_overrides(self, overrides):
        if self._fine_tune:
            overrides[IMAGENET_KEY] = False
        return overrides
