"""Epistemic scoring of the app: one Monte Carlo dropout pass of a bundle per call (MONAI Label's ``EpistemicScoring``
runs it ``epistemic_samples`` times per unlabelled image). Kept apart from ``main.py`` so that it imports with the
bundle tasks' requirements alone (``requirements-monailabel.txt``), without MONAI Label's server stack."""

from __future__ import annotations

from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    KeepLargestConnectedComponentd,
    SaveImaged,
    SqueezeDimd,
    Transposed,
)
from monailabel.tasks.infer.bundle import BundleInferTask

from transfuse_monai.networks import enable_mc_dropout

__all__ = ["EPISTEMIC_DEFAULTS", "MCDropoutBundleInferTask"]

#: epistemic scoring's defaults by the model's dimension: Monte Carlo passes per image and dropout rate
#: (``--conf epistemic_samples`` / ``epistemic_dropout`` override them); see README, "Active learning"
EPISTEMIC_DEFAULTS = {2: {"samples": 8, "dropout": 0.2}, 3: {"samples": 4, "dropout": 0.2}}


class MCDropoutBundleInferTask(BundleInferTask):
    """The bundle's inference with Monte Carlo dropout, for epistemic scoring: every call is one stochastic pass.

    The network is in inference mode with its dropout layers sampling at rate ``dropout``
    (:func:`~transfuse_monai.networks.enable_mc_dropout`): BatchNorm keeps its running statistics and TransFuse returns
    its final head. The prediction is the bundle's channel-first probabilities on the input's grid, the shape
    MONAI Label's ``EpistemicScoring`` reduces: its post-processing without the threshold or argmax, the cast to
    integers, the largest-component filter, the channel squeeze and transposition of a label image and the writer;
    returned without writing a file.

    Args:
        path: the bundle folder.
        conf: the app's configuration.
        dropout: the dropout rate of the passes (TransFuse's ``dropout``; the fusion modules use half of it).
    """

    def __init__(self, path: str, conf: dict[str, str], dropout: float) -> None:
        if not 0.0 < float(dropout) < 1.0:
            raise ValueError(f"epistemic scoring needs a dropout rate in (0, 1), got {dropout}")
        super().__init__(
            path,
            conf,
            post_filter=[AsDiscreted, CastToTyped, KeepLargestConnectedComponentd, SaveImaged, SqueezeDimd, Transposed],
            dropout=float(dropout),
            skip_writer=True,
        )

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        if network is not None:
            enable_mc_dropout(network)
        return network
