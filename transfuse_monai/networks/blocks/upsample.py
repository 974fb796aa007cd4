# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Upsampling blocks of TransFuse: the transformer branch's progressive upsampling and the attention-gated decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import UnetResBlock
from monai.networks.nets.attentionunet import AttentionBlock

__all__ = ["ResidualUpBlock", "AttentionGatedUpBlock"]

_RELU = ("relu", {"inplace": True})


class ResidualUpBlock(nn.Module):
    """Bilinear x2 upsampling followed by a residual double convolution (MONAI's :class:`UnetResBlock`).

    This is one stage of the transformer branch's progressive upsampling (t0 -> t1 -> t2).

    Args:
        spatial_dims: number of spatial dimensions (2: bilinear upsampling).
        in_channels: number of input channels.
        out_channels: number of output channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"ResidualUpBlock supports spatial_dims=2 only, got {spatial_dims}.")
        self.conv = UnetResBlock(
            spatial_dims, in_channels, out_channels, kernel_size=3, stride=1, norm_name="batch", act_name=_RELU
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.conv(x)


class AttentionGatedUpBlock(nn.Module):
    """Decoder stage ``f^{i+1} = Conv([AG(f^{i+1}, Up(f^i)), Up(f^i)])`` of TransFuse.

    The coarser map is upsampled bilinearly to the skip's size, the skip connection is gated by an additive attention
    gate (Oktay et al., "Attention U-Net", MIDL 2018; MONAI's ``AttentionBlock``) using the upsampled map as gating
    signal, and both are concatenated into a residual double convolution.

    Args:
        spatial_dims: number of spatial dimensions (2: bilinear upsampling).
        in_channels: channels of the coarser map ``f^i``.
        skip_channels: channels of the skip map ``f^{i+1}``.
        out_channels: number of output channels (also the attention gate's inner channels).
    """

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"AttentionGatedUpBlock supports spatial_dims=2 only, got {spatial_dims}.")
        self.attention = AttentionBlock(spatial_dims, f_int=out_channels, f_g=in_channels, f_l=skip_channels)
        self.conv = UnetResBlock(
            spatial_dims,
            in_channels + skip_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            norm_name="batch",
            act_name=_RELU,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: the coarser map ``f^i``.
            skip: the finer fused map ``f^{i+1}``.
        """
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([self.attention(x, skip), x], dim=1))
