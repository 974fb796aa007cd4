# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""TransFuse: fusing transformers and CNNs for medical image segmentation.

Reference:
    Zhang, Liu, Hu. "TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation", MICCAI 2021,
    https://arxiv.org/abs/2102.08005
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution
from monai.utils import ensure_tuple_rep

from transfuse_monai.networks.blocks.backbones import (
    ViTEncoder,
    create_cnn_encoder,
    pretrained_mean_std,
    resample_pos_embed,
    select_feature_indices,
)
from transfuse_monai.networks.blocks.bifusion import BIFUSION_COMPONENTS, BiFusion
from transfuse_monai.networks.blocks.upsample import AttentionGatedUpBlock, ResidualUpBlock

__all__ = [
    "BRANCHES",
    "COMPOSITIONS",
    "TABLE5_ABLATIONS",
    "TABLE5_DESCRIPTIONS",
    "TRANSFUSE_PRESETS",
    "TransFuse",
    "pretrained_normalization",
]

#: Backbone presets of the paper's variants: CNN (timm name), transformer (timm name), transformer depth.
TRANSFUSE_PRESETS: dict[str, dict] = {
    "S": {"cnn_name": "resnet34", "vit_name": "deit_small_patch16_224", "depth": 8},
    "L": {"cnn_name": "res2net50_26w_4s", "vit_name": "deit_base_patch16_224", "depth": 10},
    "L*": {"cnn_name": "resnetv2_50x1_bit", "vit_name": "vit_base_patch16_224", "depth": 12},
}


#: The branches a TransFuse can be built from (``branches``): the preset's CNN, its transformer, and a second CNN
#: (``second_cnn_name``, VGG-16 by default) in the transformer's place, the paper's two-CNN ablation.
BRANCHES = ("cnn", "transformer", "cnn2")
#: How two branches are composed (``composition``): side by side on the image, fused at each scale by
#: :class:`~transfuse_monai.networks.blocks.BiFusion` (or Concat+Res), or one after the other, the transformer on the
#: CNN's stride-16 map (TransUNet-like), the CNN's stride-8 and stride-4 maps feeding the decoder.
COMPOSITIONS = ("parallel", "sequential")
#: The branch ablations of the paper's Table 5 as data, each row the arguments it sets (``ablation``); E.6 is the
#: proposed TransFuse, every default.
TABLE5_ABLATIONS: dict[str, dict] = {
    "E.1": {"branches": ("cnn",)},
    "E.2": {"branches": ("transformer",)},
    "E.3": {"branches": ("cnn", "transformer"), "composition": "sequential"},
    "E.4": {"branches": ("cnn", "cnn2")},
    "E.5": {"branches": ("cnn", "transformer"), "bifusion": ()},
    "E.6": {"branches": ("cnn", "transformer")},
}
#: what each row of Table 5 is, for tables and logs
TABLE5_DESCRIPTIONS = {
    "E.1": "CNN only",
    "E.2": "transformer only",
    "E.3": "CNN then transformer (sequential)",
    "E.4": "two CNNs in parallel, BiFusion",
    "E.5": "CNN + transformer in parallel, Concat+Res",
    "E.6": "CNN + transformer in parallel, BiFusion (TransFuse)",
}
SECOND_CNN = "vgg16"
#: the value of each ablation axis where neither the arguments nor the ablation set it: TransFuse
_AXIS_DEFAULTS = {"branches": ("cnn", "transformer"), "composition": "parallel", "bifusion": BIFUSION_COMPONENTS}


def pretrained_normalization(
    variant: str = "S", in_channels: int = 3, cnn_name: str | None = None
) -> dict[str, list[float]]:
    """The input normalisation that a TransFuse ``variant``'s pretrained backbones expect, per input channel.

    The values are those of the timm ``pretrained_cfg`` of the variant's CNN (``cnn_name`` overrides the preset's),
    adapted to ``in_channels`` as timm adapts the pretrained first convolution (see
    :func:`~transfuse_monai.networks.blocks.pretrained_mean_std`): ImageNet's mean and std for ``"S"`` and ``"L"``
    (RGB, or their averages ``0.449`` / ``0.226`` for one grey channel), ``0.5`` / ``0.5`` for ``"L*"``. The presets
    pair a CNN and a transformer pretrained with the same normalisation. The bundles read it once per config::

        "normalization": "$transfuse_monai.networks.pretrained_normalization(@variant, @task.in_channels)",
        {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": "$@normalization['mean']",
         "divisor": "$@normalization['std']", "channel_wise": true}

    Args:
        variant: ``"S"``, ``"L"`` or ``"L*"`` (:data:`TRANSFUSE_PRESETS`).
        in_channels: number of input channels of the network.
        cnn_name: timm CNN name overriding the preset's, as in :class:`TransFuse`.

    Returns:
        ``{"mean": [...], "std": [...]}``, one Python float per input channel.

    Raises:
        ValueError: an unknown variant, or a CNN without a pretrained mean and std.
        ModuleNotFoundError: timm is not installed.
    """
    if variant not in TRANSFUSE_PRESETS:
        raise ValueError(f"Unknown TransFuse variant '{variant}'; choose one of {sorted(TRANSFUSE_PRESETS)}.")
    return pretrained_mean_std(cnn_name or TRANSFUSE_PRESETS[variant]["cnn_name"], in_channels)


_RELU = ("relu", {"inplace": True})
PATCH_SIZE = 16
#: State-dict key of the transformer's position embedding, the only entry whose shape depends on ``img_size``.
POS_EMBED_KEY = "transformer.pos_embed"


def _head(spatial_dims: int, in_channels: int, hidden: int, out_channels: int, reduce_1x1: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    if reduce_1x1:
        layers.append(Convolution(spatial_dims, in_channels, hidden, kernel_size=1, act=_RELU, norm="batch",
                                  adn_ordering="NA"))
        in_channels = hidden
    layers.append(Convolution(spatial_dims, in_channels, hidden, kernel_size=3, act=_RELU, norm="batch",
                              adn_ordering="NA"))
    layers.append(Convolution(spatial_dims, hidden, out_channels, kernel_size=3, conv_only=True))
    return nn.Sequential(*layers)


class TransFuse(nn.Module):
    """TransFuse segmentation network (Zhang et al., MICCAI 2021).

    Two branches run in parallel on the input: a transformer (timm ViT/DeiT without class token, truncated to
    ``depth`` blocks, final LayerNorm, then two bilinear-x2 residual upsampling stages giving ``t0`` (H/16),
    ``t1`` (H/8), ``t2`` (H/4)) and a CNN (timm ``features_only``, last stage removed, giving ``g0`` (H/16),
    ``g1`` (H/8), ``g2`` (H/4)). A :class:`~transfuse_monai.networks.blocks.BiFusion` module fuses each scale
    (``f0``, ``f1``, ``f2``); the fused maps are merged top-down by attention-gated up-sampling blocks.

    Three heads give deep supervision: on the final fused map, on the transformer's ``t2`` and on the deepest fusion
    ``f0``, each resized (bilinear) to the input size. In training mode (with ``deep_supervision``) the network
    returns the three stacked as ``(B, 3, out_channels, H, W)`` in that order (final, transformer, deepest fusion),
    MONAI's :class:`~monai.networks.nets.DynUNet` convention; in eval mode it returns the final map
    ``(B, out_channels, H, W)`` only. Outputs are logits.

    Checkpoints are portable across input sizes: ``load_state_dict`` (and so MONAI's ``CheckpointLoader``,
    ``ckpt_export``, MONAI Label, ...) resamples a ``transformer.pos_embed`` trained at another ``img_size`` to this
    network's token grid (:meth:`fit_pos_embed`), every other entry is loaded as usual.

    Presets (``variant``): ``"S"`` ResNet-34 + DeiT-S (8 blocks), ``"L"`` Res2Net-50 + DeiT-B (10 blocks),
    ``"L*"`` ResNetV2-50 (BiT) + ViT-B/16 (12 blocks). ``cnn_name``, ``vit_name`` and ``depth`` override the preset,
    so any timm CNN with stride 4/8/16 features and any timm ViT/DeiT with 16x16 patches can be paired.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes; one logit map per class, sigmoid activation).
        img_size: nominal input size ``(H, W)``, multiples of 16. It fixes the stored position-embedding grid;
            other multiples of 16 are accepted at run time (the embedding is interpolated).
        variant: ``"S"``, ``"L"`` or ``"L*"``.
        cnn_name: timm CNN name overriding the preset.
        vit_name: timm ViT/DeiT name overriding the preset.
        depth: number of transformer blocks overriding the preset.
        pretrained: load ImageNet weights of both branches through timm's hub loading (needs network access once).
        cnn_weights: local checkpoint of the CNN (a full classification-model state dict) for offline use.
        vit_weights: local checkpoint of the ViT/DeiT for offline use.
        cnn_out_indices: timm ``features_only`` indices of the stride 4, 8, 16 maps (found automatically if None).
        bifusion: enabled BiFusion components, a subset of ``("spatial", "channel", "hadamard")``; ``()`` is the
            paper's "Concat+Res" ablation baseline. Default: all three (the ablation's choice where it sets one).
            Only two parallel branches are fused.
        dropout: ``Dropout2d`` rate on branch features (the fusion modules use half of it).
        drop_path_rate: stochastic depth of the transformer blocks.
        align_corners: ``align_corners`` of the heads' final bilinear resize (the authors' current code uses True;
            their released ISIC checkpoint was trained with False).
        deep_supervision: return the three stacked head outputs in training mode.
        spatial_dims: number of spatial dimensions; only 2 is supported.
        branches: the branches (:data:`BRANCHES`): ``("cnn", "transformer")`` (the default), ``("cnn",)``,
            ``("transformer",)`` or ``("cnn", "cnn2")``. A single branch feeds the decoder directly, its three maps
            in place of the fused ones, and its stride-4 map feeds the second head; a transformer alone is decoded
            with the channel widths of the preset's CNN, so that only the encoder differs.
        composition: ``"parallel"`` (the default) or ``"sequential"`` (:data:`COMPOSITIONS`; CNN and transformer
            only): the transformer runs on the CNN's stride-16 map, one token per position (its patch embedding
            becomes 1x1), and the decoder merges its output with the CNN's stride-8 and stride-4 maps. The
            transformer's up-sampled map still feeds the second head.
        second_cnn_name: timm CNN of the ``"cnn2"`` branch (default ``"vgg16"``, the paper's), built and loaded as
            the first one (``pretrained``); its maps are the second input of each BiFusion, in the transformer's
            place.
        second_cnn_weights: local checkpoint of the second CNN for offline use.
        ablation: a row of the paper's Table 5 (:data:`TABLE5_ABLATIONS`): ``"E.1"`` ResNet-34 only, ``"E.2"``
            DeiT-S only, ``"E.3"`` ResNet-34 then DeiT-S (sequential), ``"E.4"`` ResNet-34 + VGG-16 with BiFusion,
            ``"E.5"`` ResNet-34 + DeiT-S fused by Concat+Res, ``"E.6"`` TransFuse (the default). It sets
            ``branches``, ``composition`` and ``bifusion``; an explicit value of one of them that disagrees is an
            error. The backbones stay the ``variant``'s.

    Raises:
        ValueError: on an unknown variant or ablation, a size that is not a multiple of 16, unsupported
            ``spatial_dims``, backbones that do not fit, or branches, composition and fusion that the paper does
            not define together (e.g. a sequential composition of two CNNs, or BiFusion with one branch).
    """

    # Python-only (TorchScript would compile it, and a network without a transformer has no token grid)
    __jit_unused_properties__ = ["token_grid"]

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        img_size: Sequence[int] | int = (352, 352),
        variant: str = "S",
        cnn_name: str | None = None,
        vit_name: str | None = None,
        depth: int | None = None,
        pretrained: bool = False,
        cnn_weights: str | os.PathLike | None = None,
        vit_weights: str | os.PathLike | None = None,
        cnn_out_indices: Sequence[int] | None = None,
        bifusion: Sequence[str] | None = None,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
        align_corners: bool = True,
        deep_supervision: bool = True,
        spatial_dims: int = 2,
        branches: Sequence[str] | None = None,
        composition: str | None = None,
        second_cnn_name: str | None = None,
        second_cnn_weights: str | os.PathLike | None = None,
        ablation: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"TransFuse is a 2D network: spatial_dims must be 2, got {spatial_dims}.")
        if variant not in TRANSFUSE_PRESETS:
            raise ValueError(f"Unknown TransFuse variant '{variant}'; choose one of {sorted(TRANSFUSE_PRESETS)}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        img_size = ensure_tuple_rep(img_size, 2)
        if any(int(s) <= 0 or int(s) % PATCH_SIZE for s in img_size):
            raise ValueError(f"img_size must be positive multiples of {PATCH_SIZE}, got {tuple(img_size)}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        branches, composition, bifusion = _resolve_ablation(ablation, branches, composition, bifusion)
        preset = TRANSFUSE_PRESETS[variant]
        self.variant = variant
        self.ablation = ablation
        self.branches: tuple[str, ...] = branches
        self.composition = composition
        self.cnn_name: str = cnn_name or preset["cnn_name"]
        self.vit_name: str = vit_name or preset["vit_name"]
        self.second_cnn_name: str | None = (second_cnn_name or SECOND_CNN) if "cnn2" in branches else None
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.img_size: tuple[int, int] = (int(img_size[0]), int(img_size[1]))
        self.align_corners = bool(align_corners)
        self.deep_supervision = bool(deep_supervision)
        self.sequential = composition == "sequential"
        has_cnn, has_transformer = "cnn" in branches, "transformer" in branches

        # --- the encoders (created in this order, so the default network draws the same random numbers as always)
        self.transformer = None
        if has_transformer:
            depth = preset["depth"] if depth is None and vit_name is None else depth
            if self.sequential:  # on the CNN's stride-16 map: one token per position
                channels16 = _cnn_channels(self.cnn_name, cnn_out_indices)[2]
                self.transformer = ViTEncoder(
                    self.vit_name, channels16, [s // PATCH_SIZE for s in self.img_size], depth=depth,
                    pretrained=pretrained, weights=vit_weights, drop_path_rate=drop_path_rate, patch_size=1,
                )
            else:
                self.transformer = ViTEncoder(
                    self.vit_name, in_channels, self.img_size, depth=depth, pretrained=pretrained,
                    weights=vit_weights, drop_path_rate=drop_path_rate,
                )
        self.cnn = None
        if has_cnn:
            self.cnn = create_cnn_encoder(
                self.cnn_name, in_channels, out_indices=cnn_out_indices, pretrained=pretrained, weights=cnn_weights
            )
            c4, c8, c16 = (int(c) for c in self.cnn.feature_info.channels())
        else:  # decoded at the widths of the preset's CNN
            c4, c8, c16 = _cnn_channels(self.cnn_name, cnn_out_indices)
        self.cnn2 = None
        if self.second_cnn_name is not None:
            self.cnn2 = create_cnn_encoder(
                self.second_cnn_name, in_channels, pretrained=pretrained, weights=second_cnn_weights
            )
        self.feature_channels = (c16, c8, c4)

        # --- the second branch's maps (H/16, H/8, H/4): transformer t0 (E) -> t1 (c8) -> t2 (c4), or the second CNN's
        self.transformer_up1 = None
        self.transformer_up2 = None
        second: tuple[int, int, int] | None = None
        if self.transformer is not None:
            embed_dim = self.transformer.embed_dim
            self.transformer_up1 = ResidualUpBlock(spatial_dims, embed_dim, c8)
            self.transformer_up2 = ResidualUpBlock(spatial_dims, c8, c4)
            second = (embed_dim, c8, c4)
        if self.cnn2 is not None:
            v4, v8, v16 = (int(c) for c in self.cnn2.feature_info.channels())
            second = (v16, v8, v4)

        # --- fusion per scale (two parallel branches), else the maps the decoder merges as they are
        self.fusion0 = None
        self.fusion1 = None
        self.fusion2 = None
        if has_cnn and second is not None and not self.sequential:
            components = tuple(bifusion)
            half = dropout / 2
            self.fusion0 = BiFusion(spatial_dims, c16, second[0], c16, reduction=4, components=components, dropout=half)
            self.fusion1 = BiFusion(spatial_dims, c8, second[1], c8, reduction=2, components=components, dropout=half)
            self.fusion2 = BiFusion(spatial_dims, c4, second[2], c4, reduction=1, components=components, dropout=half)
            decoded = (c16, c8, c4)
        elif self.sequential:
            decoded = (second[0], c8, c4)
        else:
            decoded = second if second is not None else (c16, c8, c4)
        self.decoder1 = AttentionGatedUpBlock(spatial_dims, decoded[0], decoded[1], decoded[1])
        self.decoder2 = AttentionGatedUpBlock(spatial_dims, decoded[1], decoded[2], decoded[2])

        # --- heads: final map; the second branch's stride-4 map (a single branch's own); the deepest merged map
        side = second[2] if second is not None else c4
        self.head_final = _head(spatial_dims, decoded[2], decoded[2], out_channels, reduce_1x1=False)
        self.head_transformer = _head(spatial_dims, side, c4, out_channels, reduce_1x1=side != c4)
        self.head_fusion = _head(spatial_dims, decoded[0], c4, out_channels, reduce_1x1=True)
        self.dropout = nn.Dropout2d(dropout)

        for module in (self.transformer_up1, self.transformer_up2, self.fusion0, self.fusion1, self.fusion2,
                       self.decoder1, self.decoder2, self.head_final, self.head_transformer, self.head_fusion):
            if module is not None:
                module.apply(_init_weights)
        # a checkpoint trained at another input size loads through every consumer of load_state_dict
        self.register_load_state_dict_pre_hook(_fit_pos_embed_on_load)

    @property
    def token_grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)`` of the stored position embedding: ``img_size // 16``.

        Raises:
            AttributeError: the network has no transformer branch (ablations E.1, E.4).
        """
        if self.transformer is None:
            raise AttributeError(f"this TransFuse has no transformer branch (branches {list(self.branches)})")
        return int(self.transformer.grid_size[0]), int(self.transformer.grid_size[1])

    def fit_pos_embed(
        self, pos_embed: torch.Tensor, source_grid: Sequence[int] | None = None, source: str = "the state dict"
    ) -> torch.Tensor:
        """A checkpoint's position embedding resampled to this network's token grid.

        A checkpoint trained at 96x96 (a 6x6 grid, ``(1, 36, 384)``) then loads into a network built for 352x352
        (``(1, 484, 384)``). The embedding is resampled as the network itself does for inputs of another size
        (:func:`~transfuse_monai.networks.blocks.backbones.resample_pos_embed`, bicubic), so the loaded network
        computes what the original one computes at the new size.

        Args:
            pos_embed: the checkpoint's ``transformer.pos_embed``, ``(1, n, embed_dim)``.
            source_grid: its token grid ``(h, w)`` (the training ``img_size // 16``). Inferred when ``None``: a
                square token count is a square grid, otherwise this network's aspect ratio is assumed; a count that
                fits both (576 tokens: 24x24 or 18x32 for a 9x16 network) or neither must be given.
            source: what the embedding comes from, for error messages (a file name).

        Returns:
            the resampled embedding; ``pos_embed`` itself when it already has this network's token count (and no
            ``source_grid`` says otherwise), or is not a ``(1, n, embed_dim)`` tensor of this network's width, or the
            network has no transformer (the strict checks of ``load_state_dict`` report the latter two).

        Raises:
            ValueError: ``source_grid`` does not hold the embedding's tokens, or the grid cannot be inferred.
        """
        if self.transformer is None:  # no transformer branch: the strict state-dict check reports the extra entry
            return pos_embed
        own = self.transformer.pos_embed
        if (
            not isinstance(pos_embed, torch.Tensor) or pos_embed.dim() != 3 or pos_embed.shape[0] != 1
            or pos_embed.shape[2] != own.shape[2]
        ):
            return pos_embed
        target = self.token_grid
        n = int(pos_embed.shape[1])
        if source_grid is not None:
            grid = (int(source_grid[0]), int(source_grid[1]))
            if grid[0] * grid[1] != n:
                raise ValueError(
                    f"source_grid {grid} does not hold the {n} tokens of {POS_EMBED_KEY} {tuple(pos_embed.shape)} "
                    f"in {source}."
                )
        elif n == target[0] * target[1]:
            return pos_embed  # the network's own grid
        else:
            candidates = _candidate_grids(n, target)
            if len(candidates) != 1:
                if candidates:
                    why = "could be " + " or ".join(f"{h}x{w}" for h, w in candidates)
                else:
                    why = "is neither square nor of the model's aspect ratio"
                raise ValueError(
                    f"{source}: the position embedding {POS_EMBED_KEY} {tuple(pos_embed.shape)} was trained at "
                    f"another input size and its token grid {why}; the model has img_size={self.img_size} (grid "
                    f"{target[0]}x{target[1]}). Pass source_grid=(h, w), the training img_size // 16 "
                    "(load_transfuse_checkpoint), or build the network with the checkpoint's img_size."
                )
            grid = candidates[0]
        with torch.no_grad():
            return resample_pos_embed(pos_embed, list(target), list(grid))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"TransFuse expects a (B, C, H, W) tensor, got {x.dim()} dimensions.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"TransFuse was built for {self.in_channels} input channels, got {x.shape[1]}.")
        if x.shape[2] % 16 != 0 or x.shape[3] % 16 != 0:
            raise ValueError(
                f"TransFuse needs H and W to be multiples of 16, got {x.shape[2]}x{x.shape[3]}; "
                "resize or pad the input (e.g. monai.transforms.DivisiblePad(k=16))."
            )

    def _encode_cnn(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The CNN's maps at strides 16, 8, 4, with dropout."""
        # Run the timm feature extractor stage by stage so that dropout on a returned stage also feeds the next one.
        features: List[torch.Tensor] = []
        if self.cnn is not None:
            for name, module in self.cnn.items():
                x = module(x)
                if name in self.cnn.return_layers:
                    x = self.dropout(x)
                    features.append(x)
        return [features[2], features[1], features[0]]

    def _encode_cnn2(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The second CNN's maps at strides 16, 8, 4, with dropout (see :meth:`_encode_cnn`; a method of its own
        because TorchScript cannot pass a submodule as an argument, and wrapping the CNNs would rename their state-dict
        keys)."""
        features: List[torch.Tensor] = []
        if self.cnn2 is not None:
            for name, module in self.cnn2.items():
                x = module(x)
                if name in self.cnn2.return_layers:
                    x = self.dropout(x)
                    features.append(x)
        return [features[2], features[1], features[0]]

    def _resize(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images ``(B, in_channels, H, W)``, H and W multiples of 16.

        Returns:
            logits ``(B, out_channels, H, W)`` in eval mode; ``(B, 3, out_channels, H, W)`` (final, transformer,
            deepest fusion) in training mode with deep supervision.
        """
        self._check_input(x)
        size = [int(x.shape[2]), int(x.shape[3])]
        # each branch's maps at strides 16, 8, 4 (empty for a branch the network does not have)
        first: List[torch.Tensor] = []
        second: List[torch.Tensor] = []
        if self.transformer is not None:
            if self.sequential:
                first = self._encode_cnn(x)
                t0 = self.dropout(self.transformer(first[0]))
            else:
                t0 = self.dropout(self.transformer(x))
            t1 = self.dropout(self.transformer_up1(t0))
            t2 = self.dropout(self.transformer_up2(t1))
            second = [t0, t1, t2]
        if self.cnn is not None and not self.sequential:
            first = self._encode_cnn(x)
        if self.cnn2 is not None:
            second = self._encode_cnn2(x)

        if self.fusion0 is not None:  # two parallel branches (fusion1 and fusion2 exist with it)
            merged = [self.fusion0(first[0], second[0]), self.fusion1(first[1], second[1]),
                      self.fusion2(first[2], second[2])]
        elif self.sequential:
            merged = [second[0], first[1], first[2]]
        elif len(first) > 0:
            merged = first
        else:
            merged = second
        out = self._resize(self.head_final(self.decoder2(self.decoder1(merged[0], merged[1]), merged[2])), size)
        if not (self.training and self.deep_supervision):
            return out
        side = second[2] if len(second) > 0 else first[2]
        out_t = self._resize(self.head_transformer(side), size)
        out_f = self._resize(self.head_fusion(merged[0]), size)
        return torch.stack([out, out_t, out_f], dim=1)


def _resolve_ablation(
    ablation: str | None,
    branches: Sequence[str] | None,
    composition: str | None,
    bifusion: Sequence[str] | None,
) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """``(branches, composition, bifusion)`` of a TransFuse: the arguments given, the ``ablation``'s row of
    :data:`TABLE5_ABLATIONS` for those not given, the defaults for the rest; checked together.

    Raises:
        ValueError: an unknown ablation, branch or composition; an explicit value that contradicts the ablation; a
            combination the paper does not define.
    """
    preset: dict = {}
    if ablation is not None:
        if ablation not in TABLE5_ABLATIONS:
            raise ValueError(
                f"Unknown ablation '{ablation}'; choose one of {sorted(TABLE5_ABLATIONS)} (the paper's Table 5: "
                + "; ".join(f"{k} {v}" for k, v in TABLE5_DESCRIPTIONS.items()) + ")."
            )
        preset = TABLE5_ABLATIONS[ablation]
    given = {"branches": branches, "composition": composition, "bifusion": bifusion}
    resolved = {}
    for key, value in given.items():
        default = preset.get(key, _AXIS_DEFAULTS[key])
        value = default if value is None else value if isinstance(value, str) else tuple(value)
        if ablation is not None and value != default:
            raise ValueError(
                f"ablation '{ablation}' ({TABLE5_DESCRIPTIONS[ablation]}) sets {key}={default!r}, but "
                f"{key}={value!r} was given; leave {key} unset or choose another ablation."
            )
        resolved[key] = value
    explicit_bifusion = bifusion is not None or "bifusion" in preset
    branches, composition, bifusion = resolved["branches"], resolved["composition"], resolved["bifusion"]

    unknown = sorted(set(branches) - set(BRANCHES))
    if unknown or not branches or len(set(branches)) != len(branches):
        raise ValueError(f"branches must be distinct names from {list(BRANCHES)}, got {list(branches)}.")
    if set(branches) not in ({"cnn", "transformer"}, {"cnn"}, {"transformer"}, {"cnn", "cnn2"}):
        raise ValueError(
            f"branches {list(branches)} are not one of the paper's: ('cnn', 'transformer') TransFuse, ('cnn',) and "
            "('transformer',) a single branch, ('cnn', 'cnn2') two CNNs."
        )
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {list(COMPOSITIONS)}, got '{composition}'.")
    if composition == "sequential" and set(branches) != {"cnn", "transformer"}:
        raise ValueError(
            f"a sequential composition feeds the CNN's maps to the transformer: it needs branches ('cnn', "
            f"'transformer'), got {list(branches)}."
        )
    fused = len(branches) == 2 and composition == "parallel"
    if not fused and explicit_bifusion and bifusion:
        raise ValueError(
            f"bifusion={list(bifusion)} fuses two parallel branches; this network has branches {list(branches)} "
            f"composed '{composition}', with nothing to fuse: leave bifusion unset."
        )
    return branches, composition, bifusion


def _cnn_channels(name: str, out_indices: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Channels of a timm CNN's stride 4, 8, 16 maps (the model is built on the meta device: nothing allocated)."""
    import timm

    indices = list(out_indices) if out_indices is not None else select_feature_indices(name)
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False, out_indices=tuple(indices))
    c4, c8, c16 = (int(c) for c in probe.feature_info.channels())
    return c4, c8, c16


def _candidate_grids(n: int, model_grid: Sequence[int]) -> list[tuple[int, int]]:
    """Token grids an ``n``-token position embedding may have: square, or the model grid's aspect ratio."""
    candidates = []
    root = math.isqrt(n)
    if root * root == n:
        candidates.append((root, root))
    g = math.gcd(int(model_grid[0]), int(model_grid[1]))
    a, b = int(model_grid[0]) // g, int(model_grid[1]) // g
    if n % (a * b) == 0:
        scale = math.isqrt(n // (a * b))
        if scale * scale * a * b == n and (scale * a, scale * b) not in candidates:
            candidates.append((scale * a, scale * b))
    return candidates


def _fit_pos_embed_on_load(
    module: TransFuse, state_dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """``load_state_dict`` pre-hook of :class:`TransFuse`: resample a position embedding of another token grid in
    place (``load_state_dict`` hands its hooks its own copy of the caller's dict)."""
    key = prefix + POS_EMBED_KEY
    if module.transformer is not None and key in state_dict:
        state_dict[key] = module.fit_pos_embed(state_dict[key], source="the state dict given to load_state_dict")


def _init_weights(module: nn.Module) -> None:
    """He (fan-in) normal initialisation of the decoder's convolutions, as in the paper's reference training."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
