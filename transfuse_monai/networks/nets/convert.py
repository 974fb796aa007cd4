# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Load checkpoints of the authors' reference implementation (github.com/Rayicer/TransFuse) into :class:`TransFuse`.

The authors' ``TransFuse_S`` (``lib/TransFuse.py``) uses torchvision's ResNet-34 (``resnet.*``), a DeiT-S without
class-token use (``transformer.*``), residual upsampling (``up1``, ``up2``), BiFusion modules (``up_c``, ``up_c_1_1``,
``up_c_2_1``), attention-gated decoders (``up_c_1_2``, ``up_c_2_2``) and three heads (``final_x``, ``final_1``,
``final_2``). This module maps those names onto :class:`~transfuse_monai.networks.nets.TransFuse` (variant "S").

Two differences are absorbed exactly: the SE layers are 1x1 convolutions there and linear layers here (same
weights, reshaped), and the residual double convolutions here have no bias before batch norm (a bias ``b`` before a
batch norm with running mean ``m`` is equivalent to no bias with running mean ``m - b``; in training mode the batch
mean removes it anyway).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

from transfuse_monai.networks.blocks.backbones import resample_pos_embed

__all__ = ["convert_authors_state_dict", "strip_wrappers"]

# module prefixes: authors' name -> ours
_MODULES = {
    "up1": "transformer_up1",
    "up2": "transformer_up2",
    "up_c": "fusion0",
    "up_c_1_1": "fusion1",
    "up_c_2_1": "fusion2",
    "up_c_1_2": "decoder1",
    "up_c_2_2": "decoder2",
    "final_x": "head_fusion",
    "final_1": "head_transformer",
    "final_2": "head_final",
}

# parameter suffixes inside a module: regex on the authors' suffix -> our suffix template
_BIFUSION = [
    (r"fc1\.(weight|bias)", r"channel_attention.fc.0.\1"),
    (r"fc2\.(weight|bias)", r"channel_attention.fc.2.\1"),
    (r"spatial\.conv\.weight", r"spatial_attention.conv.conv.weight"),
    (r"spatial\.bn\.(.+)", r"spatial_attention.norm.\1"),
    (r"W_g\.conv\.(.+)", r"proj_cnn.conv.\1"),
    (r"W_g\.bn\.(.+)", r"proj_cnn.adn.N.\1"),
    (r"W_x\.conv\.(.+)", r"proj_transformer.conv.\1"),
    (r"W_x\.bn\.(.+)", r"proj_transformer.adn.N.\1"),
    (r"W\.conv\.(.+)", r"hadamard_conv.conv.\1"),
    (r"W\.bn\.(.+)", r"hadamard_conv.adn.N.\1"),
    (r"residual\.bn([123])\.(.+)", r"residual.norm\1.\2"),
    (r"residual\.conv([123])\.conv\.(.+)", r"residual.conv\1.conv.\2"),
    (r"residual\.skip_layer\.conv\.(.+)", r"residual.skip.conv.\1"),
]
_UP = [
    # residual double conv: (conv index, bn index) -> (our conv, our norm)
    (r"conv\.double_conv\.0\.weight", r"conv.conv1.conv.weight"),
    (r"conv\.double_conv\.1\.(.+)", r"conv.norm1.\1"),
    (r"conv\.double_conv\.3\.weight", r"conv.conv2.conv.weight"),
    (r"conv\.double_conv\.4\.(.+)", r"conv.norm2.\1"),
    (r"conv\.identity\.0\.weight", r"conv.conv3.conv.weight"),
    (r"conv\.identity\.1\.(.+)", r"conv.norm3.\1"),
    (r"attn_block\.(W_g|W_x|psi)\.0\.(.+)", r"attention.\1.0.conv.\2"),
    (r"attn_block\.(W_g|W_x|psi)\.1\.(.+)", r"attention.\1.1.\2"),
]
_HEAD = [
    (r"(\d+)\.conv\.(.+)", r"\1.conv.\2"),
    (r"(\d+)\.bn\.(.+)", r"\1.adn.N.\2"),
]
# conv biases folded into the following batch norm's running mean: authors' bias suffix -> our norm prefix
_FOLDED_BIAS = {
    "conv.double_conv.0.bias": "conv.norm1",
    "conv.double_conv.3.bias": "conv.norm2",
    "conv.identity.0.bias": "conv.norm3",
}
_KNOWN_GRIDS = {192: (12, 16), 768: (24, 32)}  # the authors' 192x256 and 384x512 settings


def strip_wrappers(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint without its wrappers: the ``state_dict`` / ``model`` entry when present, and the
    ``module.`` prefix of DataParallel / DDP keys."""
    for key in ("state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    out = {}
    for k, v in state_dict.items():
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _map_suffix(suffix: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, template in rules:
        m = re.fullmatch(pattern, suffix)
        if m:
            return m.expand(template)
    return None


def convert_authors_state_dict(
    state_dict: Mapping,
    img_size: Sequence[int] | None = None,
    source_grid: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert a state dict of the authors' ``TransFuse_S`` into one for ``TransFuse(variant="S")``.

    Example::

        model = TransFuse(img_size=(192, 256), out_channels=1, variant="S", align_corners=False)
        sd = torch.load("TransFuse-19_best.pth", map_location="cpu")
        model.load_state_dict(convert_authors_state_dict(sd))

    Args:
        state_dict: the authors' state dict (a ``{"state_dict": ...}``/``{"model": ...}`` wrapper and
            ``DataParallel``'s ``module.`` prefixes are accepted).
        img_size: input size ``(H, W)`` of the target model; when its token grid differs from the checkpoint's, the
            position embedding is resampled as the network does at run time (timm's bicubic resampling, see
            :func:`~transfuse_monai.networks.blocks.backbones.resample_pos_embed`). ``None`` keeps the checkpoint's
            grid.
        source_grid: token grid ``(h, w)`` of the checkpoint's position embedding. Inferred when ``None``: 192
            tokens are the authors' 12x16 (192x256 input), 768 tokens 24x32, a square count a square grid.

    Returns:
        a state dict that loads into ``TransFuse(variant="S", ...)`` with ``strict=True``.

    Raises:
        ValueError: keys that are not the authors' ``TransFuse_S`` names, or a position embedding whose grid cannot
            be inferred.
    """
    sd = strip_wrappers(state_dict)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    folded: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("resnet."):
            if key.startswith(("resnet.fc.", "resnet.layer4.")):
                continue  # removed stages (identities in the authors' model)
            out["cnn." + key[len("resnet.") :]] = value
            continue
        if key.startswith("transformer."):
            sub = key[len("transformer.") :]
            if sub in ("cls_token", "dist_token") or sub.startswith("head."):
                continue  # unused by the authors' forward
            if re.match(r"(patch_embed\.proj|blocks\.\d+|norm)\.", sub) or sub == "pos_embed":
                out["transformer." + sub] = value
                continue
            unknown.append(key)
            continue
        module, _, suffix = key.partition(".")
        # longest authors' module name first ("up_c_1_1" before "up_c")
        if module not in _MODULES:
            unknown.append(key)
            continue
        ours = _MODULES[module]
        if module.startswith("final"):
            rules = _HEAD
        elif module in ("up_c", "up_c_1_1", "up_c_2_1"):
            rules = _BIFUSION
        else:
            rules = _UP
        if rules is _UP and suffix in _FOLDED_BIAS:
            folded[f"{ours}.{_FOLDED_BIAS[suffix]}"] = value
            continue
        mapped = _map_suffix(suffix, rules)
        if mapped is None:
            unknown.append(key)
            continue
        if mapped.startswith("channel_attention.fc.") and mapped.endswith("weight"):
            value = value.reshape(value.shape[0], value.shape[1])
        out[f"{ours}.{mapped}"] = value
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"{len(unknown)} key(s) are not from the authors' TransFuse_S checkpoint: {shown}. "
            "Only TransFuse_S (ResNet-34 + DeiT-S) checkpoints can be converted."
        )
    for norm_prefix, bias in folded.items():
        mean_key = f"{norm_prefix}.running_mean"
        if mean_key not in out:
            raise ValueError(f"Checkpoint has a conv bias for '{norm_prefix}' but no matching batch-norm statistics.")
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)

    if "transformer.pos_embed" in out:
        pos = out["transformer.pos_embed"]
        n = pos.shape[1]
        if source_grid is None:
            if n in _KNOWN_GRIDS:
                source_grid = _KNOWN_GRIDS[n]
            elif math.isqrt(n) ** 2 == n:
                source_grid = (math.isqrt(n), math.isqrt(n))
            else:
                raise ValueError(f"Cannot infer the token grid of a {n}-token position embedding; pass source_grid.")
        if source_grid[0] * source_grid[1] != n:
            raise ValueError(f"source_grid {tuple(source_grid)} does not hold the checkpoint's {n} tokens.")
        if img_size is not None:
            target = (int(img_size[0]) // 16, int(img_size[1]) // 16)
            if tuple(target) != tuple(source_grid):
                out["transformer.pos_embed"] = resample_pos_embed(pos, list(target), [int(g) for g in source_grid])
    return out
