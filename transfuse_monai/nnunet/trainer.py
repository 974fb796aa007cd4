# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""TransFuse trained by nnU-Net v2: ``nnUNetv2_train <dataset> 2d <fold> -tr nnUNetTrainerTransFuse``.

:class:`nnUNetTrainerTransFuse` changes what is specific to TransFuse and keeps the rest of nnU-Net: its planning and
pre-processing, its folds, its data augmentation, its loss, its validation and evaluation, its sliding-window
prediction and checkpoints. nnU-Net finds it through ``nnUNet_extTrainer`` (``python -m transfuse_monai.nnunet env``
prints the line to set it).

What the trainer changes, and why:

* **The network.** :class:`~transfuse_monai.networks.nets.TransFuse` with the plans' input channels and the label
  manager's segmentation heads. Its options are configuration data: :attr:`nnUNetTrainerTransFuse.transfuse_options`
  (a variant is a small subclass, e.g. :class:`nnUNetTrainerTransFuse_L`), overridden by the ``"transfuse"`` entry
  of the plans' configuration (``python -m transfuse_monai.nnunet configure`` writes one). The options are read when
  the network is built, for training and for ``nnUNetv2_predict`` alike, from the plans saved beside the model.
* **The patch size.** TransFuse needs multiples of 16 (its transformer's patch size); the plans' patch size is
  rounded *up* to the next multiple of 16 when it is not one (the patch then covers at least what nnU-Net planned),
  logged, and saved in the model's ``plans.json`` so that prediction tiles the same way.
* **Deep supervision, adapted.** nnU-Net supervises decoder outputs at decreasing scales; TransFuse's three heads
  (final, transformer, deepest fusion) all predict at full resolution. nnU-Net's multi-scale deep supervision is
  therefore off (no down-sampled targets), and nnU-Net's own loss (Dice + cross-entropy, or Dice + BCE for regions)
  is applied to each head against the full-resolution target and weighted as in the paper,
  :attr:`~nnUNetTrainerTransFuse.head_weights` ``(0.5, 0.3, 0.2)``. Validation and prediction use the final head.
  :class:`nnUNetTrainerTransFuse_noDS` trains the final head alone.
* **The optimiser.** The paper's Adam at 1e-4 (SGD with momentum 0.99 at 1e-2, nnU-Net's default for its CNNs, is
  not what the transformer branch was trained with), under nnU-Net's polynomial learning-rate schedule, weight decay
  and gradient clipping.
* **Pretrained branches.** ``pretrained`` (default true, as in the bundles) initialises the CNN and the ViT from
  ImageNet weights when a training starts: from local files (``cnn_weights`` / ``vit_weights`` in the plans' entry)
  or timm's hub cache, offline first, with a message naming the ways out when neither is there. A continued training
  (``--c``) and nnU-Net's ``-pretrained_weights`` take their weights from their checkpoint instead, and prediction
  never needs the ImageNet files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from transfuse_monai.losses.structure_loss import TRANSFUSE_DS_WEIGHTS, unstack_heads
from transfuse_monai.networks.nets.transfuse import PATCH_SIZE, TransFuse
from transfuse_monai.nnunet.plans import (
    NETWORK_OPTIONS,
    PLANS_KEY,
    PRETRAINED_OPTIONS,
    check_options,
    transfuse_patch_size,
)

__all__ = [
    "HeadsLoss",
    "nnUNetTrainerTransFuse",
    "nnUNetTrainerTransFuse_5epochs",
    "nnUNetTrainerTransFuse_L",
    "nnUNetTrainerTransFuse_noDS",
]


def _unwrap(network: nn.Module) -> nn.Module:
    """The module itself under DDP and ``torch.compile`` wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


class HeadsLoss(nn.Module):
    """nnU-Net's loss on each of TransFuse's full-resolution heads, weighted.

    Training-mode outputs ``(B, N, C, H, W)`` (heads stacked on dim 1) give ``sum_i weights[i] * loss(head_i,
    target)``; an eval-mode output ``(B, C, H, W)`` gives ``loss(output, target)``.

    Args:
        loss: the per-head loss, nnU-Net's ``DC_and_CE_loss`` or ``DC_and_BCE_loss``.
        weights: the weight of each head, in TransFuse's order (final, transformer, deepest fusion).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] = TRANSFUSE_DS_WEIGHTS) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}.")
        self.loss = loss
        self.weights = tuple(float(w) for w in weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() != target.dim() + 1:
            return self.loss(output, target)
        heads = unstack_heads(output, len(self.weights))
        return sum(w * self.loss(head, target) for w, head in zip(self.weights, heads) if w)


class nnUNetTrainerTransFuse(nnUNetTrainer):
    """nnU-Net v2's trainer with TransFuse as its network (2D configurations; see the module docstring).

    Select it with ``-tr nnUNetTrainerTransFuse`` in ``nnUNetv2_train``, ``nnUNetv2_predict`` and
    ``nnUNetv2_find_best_configuration``. A variant is a subclass that changes the class attributes.

    Class attributes:
        transfuse_options: TransFuse's options (:data:`NETWORK_OPTIONS` and :data:`PRETRAINED_OPTIONS`); the plans
            configuration's ``"transfuse"`` entry overrides them key by key.
        head_weights: the loss weight of each head (final, transformer, deepest fusion); ``None`` trains the final
            head alone.
        learning_rate: Adam's initial learning rate.
    """

    transfuse_options: ClassVar[dict] = {"variant": "S", "dropout": 0.2, "pretrained": True}
    head_weights: ClassVar[tuple[float, ...] | None] = TRANSFUSE_DS_WEIGHTS
    learning_rate: ClassVar[float] = 1e-4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self._continuing = bool(plans.get("continue_training", False))
        _round_patch_size(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.learning_rate
        # nnU-Net's multi-scale deep supervision is off: TransFuse's heads are all full resolution (HeadsLoss)
        self.enable_deep_supervision = False
        # weight files are checked when a training starts, not to continue one (possibly on another machine)
        self.options = self.resolve_options(self.configuration_manager, check_files=not self._continuing)
        planned = plans["configurations"][configuration].get("_planned_patch_size")
        if planned is not None:
            self.print_to_log_file(
                f"TransFuse: patch size {tuple(planned)} of the plans rounded up to "
                f"{tuple(self.configuration_manager.patch_size)} (multiples of {PATCH_SIZE})"
            )

    # ------------------------------------------------------------------------------------------------ options

    @classmethod
    def resolve_options(cls, configuration_manager: ConfigurationManager, check_files: bool = False) -> dict:
        """The class's :attr:`transfuse_options` updated by the configuration's ``"transfuse"`` entry, checked.

        Raises:
            ValueError: an unknown option or variant, naming the plans entry.
            FileNotFoundError: ``check_files`` and a weights file of the entry is missing.
        """
        entry = configuration_manager.configuration.get(PLANS_KEY) or {}
        check_options(entry, f"the plans configuration's '{PLANS_KEY}' entry", check_files=check_files)
        options = {**cls.transfuse_options, **entry}
        return options

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """TransFuse for the configuration's patch size, channels and options, without pretrained weights (training
        loads them in :meth:`initialize`; prediction loads the trained ones). nnU-Net calls it to train and to
        predict; ``enable_deep_supervision`` (nnU-Net's multi-scale flag) is ignored: the heads follow
        :attr:`head_weights`."""
        _check_2d(configuration_manager, "this")
        options = cls.resolve_options(configuration_manager)
        network_options = _network_options(options)
        return TransFuse(
            in_channels=num_input_channels,
            out_channels=num_output_channels,
            img_size=transfuse_patch_size(configuration_manager.patch_size),
            deep_supervision=cls.head_weights is not None,
            **network_options,
        )

    # ------------------------------------------------------------------------------------------ nnU-Net hooks

    def initialize(self):
        super().initialize()
        options = self.options
        self.print_to_log_file(
            "TransFuse: " + ", ".join(f"{k}={options[k]}" for k in sorted(options))
            + f"; loss weights of the heads {self.head_weights}; Adam at {self.initial_lr}"
        )
        if self._continuing:
            self.print_to_log_file("TransFuse: continuing a training; the weights come from its checkpoint")
        elif options.get("pretrained") or options.get("cnn_weights") or options.get("vit_weights"):
            self._load_pretrained_branches()

    def _load_pretrained_branches(self) -> None:
        """Load ImageNet weights into the CNN and ViT branches: a second TransFuse is built with the weights (the
        bundles' loading code: local files, else timm's hub cache offline first, else an error naming the ways
        out) and its state copied, so that the optimiser keeps its parameters."""
        options = self.options
        network_options = _network_options(options)
        network = _unwrap(self.network)
        try:
            donor = TransFuse(
                in_channels=network.in_channels, out_channels=network.out_channels, img_size=network.img_size,
                deep_supervision=network.deep_supervision, pretrained=bool(options.get("pretrained")),
                cnn_weights=options.get("cnn_weights"), vit_weights=options.get("vit_weights"), **network_options,
            )
        except RuntimeError as err:  # no cached hub weights and no network: the ways out, in nnU-Net's terms
            reason = str(err).split(" Either ")[0]
            dataset = self.plans_manager.dataset_name
            raise RuntimeError(
                f"{reason}. Under nnU-Net, TransFuse's options live in a plans configuration: add one that trains "
                f"from scratch (python -m transfuse_monai.nnunet configure {dataset} --name 2d_scratch "
                f"--no-pretrained) or loads local files (... --cnn-weights <file> --vit-weights <file>: state "
                "dicts of the timm classification models), then nnUNetv2_train with that configuration; or fill "
                "timm's hub cache on a machine with network access and copy it here (HF_HOME / HF_HUB_CACHE)."
            ) from err
        branches = {k: v for k, v in donor.state_dict().items() if k.startswith(("cnn.", "transformer."))}
        missing = network.load_state_dict(branches, strict=False)
        del donor
        sources = ", ".join(
            f"{branch} from {options[key]}" if options.get(key) else f"{branch} from timm's cache"
            for branch, key in (("CNN", "cnn_weights"), ("ViT", "vit_weights"))
        )
        self.print_to_log_file(
            f"TransFuse: ImageNet weights loaded into {len(branches)} tensors of the branches ({sources}); "
            f"{len(missing.missing_keys)} tensors of the fusion and decoder keep their initialisation"
        )

    def configure_optimizers(self):
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        loss = super()._build_loss()  # nnU-Net's loss; enable_deep_supervision is False, so no multi-scale wrapper
        return HeadsLoss(loss, self.head_weights) if self.head_weights is not None else loss

    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net switches its decoder's multi-scale outputs here; TransFuse returns its heads in training mode
        only (and :class:`HeadsLoss` takes either form), so there is nothing to switch."""

    def plot_network_architecture(self):
        """nnU-Net draws its U-Nets with hiddenlayer when installed; TransFuse's graph is not drawn."""


def _network_options(options: dict) -> dict:
    """The options that shape the network (:data:`NETWORK_OPTIONS`), as TransFuse's arguments."""
    network_options = {k: v for k, v in options.items() if k in NETWORK_OPTIONS}
    if "bifusion" in network_options:  # a JSON list in the plans
        network_options["bifusion"] = tuple(network_options["bifusion"])
    return network_options


def _round_patch_size(plans: dict, configuration: str) -> None:
    """Round the configuration's patch size up to multiples of 16 in ``plans`` (in place, so the trainer's saved
    ``plans.json`` and checkpoints carry it); the planned size is kept under ``_planned_patch_size``.

    Raises:
        ValueError: the configuration is not 2D.
    """
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        return  # nnU-Net raises its own error naming the valid configurations
    manager = PlansManager(plans).get_configuration(configuration)
    _check_2d(manager, configuration)  # before nnU-Net creates the output folder and its log
    planned = tuple(int(s) for s in manager.patch_size)
    rounded = transfuse_patch_size(planned)
    entry = configurations[configuration]
    if rounded != planned:
        entry["patch_size"] = list(rounded)
        entry.setdefault("_planned_patch_size", list(planned))


def _check_2d(configuration_manager: ConfigurationManager, name: str) -> None:
    if len(configuration_manager.patch_size) != 2:
        raise ValueError(
            f"TransFuse is a 2D network, but the {name!r} configuration has a {len(configuration_manager.patch_size)}D "
            f"patch size {tuple(configuration_manager.patch_size)}; train nnU-Net's '2d' configuration "
            "(nnUNetv2_train <dataset> 2d <fold> -tr nnUNetTrainerTransFuse)."
        )


class nnUNetTrainerTransFuse_5epochs(nnUNetTrainerTransFuse):
    """Five epochs (nnU-Net's ``_5epochs`` naming), for smoke tests and demos."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerTransFuse_L(nnUNetTrainerTransFuse):
    """TransFuse-L (Res2Net-50 and DeiT-B)."""

    transfuse_options: ClassVar[dict] = {**nnUNetTrainerTransFuse.transfuse_options, "variant": "L"}


class nnUNetTrainerTransFuse_noDS(nnUNetTrainerTransFuse):
    """The final head alone is trained (no deep supervision of the transformer and fusion heads)."""

    head_weights: ClassVar[tuple[float, ...] | None] = None
