# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""BiFusion: the module that fuses CNN and transformer features of one scale in TransFuse.

Reference:
    Zhang, Liu, Hu. "TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation", MICCAI 2021,
    https://arxiv.org/abs/2102.08005 (Sec. 2.3, Fig. 1 and the BiFusion ablation of Table 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.factories import Act, Dropout, Norm

__all__ = ["BIFUSION_COMPONENTS", "SpatialAttention", "PreActBottleneck", "BiFusion"]

#: The optional parts of a BiFusion module, in the order of the paper's ablation (Table 4): CNN spatial attention,
#: transformer channel attention, and the Hadamard ("dot") product branch. With none of them the module is the
#: "Concat+Res" baseline.
BIFUSION_COMPONENTS = ("spatial", "channel", "hadamard")


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al., ECCV 2018).

    The channel-wise maximum and mean of the input are stacked, convolved by a ``kernel_size`` convolution followed
    by batch normalisation and a sigmoid; the resulting map gates the input.

    Args:
        spatial_dims: number of spatial dimensions.
        kernel_size: kernel size of the attention convolution. Defaults to 7.
    """

    def __init__(self, spatial_dims: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = Convolution(
            spatial_dims, 2, 1, kernel_size=kernel_size, bias=False, conv_only=True, padding=(kernel_size - 1) // 2
        )
        self.norm = Norm[Norm.BATCH, spatial_dims](1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(pooled)))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck residual block (He et al., ECCV 2016), the fusion block of TransFuse.

    ``BN-ReLU-Conv1x1 -> BN-ReLU-Conv3x3 -> BN-ReLU-Conv1x1`` with half the output channels inside, plus an identity
    (or a 1x1 convolution where the channel counts differ).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        out_channels: number of output channels (at least 2).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"PreActBottleneck needs out_channels >= 2, got {out_channels}.")
        mid = out_channels // 2
        norm = Norm[Norm.BATCH, spatial_dims]
        self.norm1 = norm(in_channels)
        self.conv1 = Convolution(spatial_dims, in_channels, mid, kernel_size=1, conv_only=True)
        self.norm2 = norm(mid)
        self.conv2 = Convolution(spatial_dims, mid, mid, kernel_size=3, conv_only=True)
        self.norm3 = norm(mid)
        self.conv3 = Convolution(spatial_dims, mid, out_channels, kernel_size=1, conv_only=True)
        self.act = Act[Act.RELU]()
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        out = self.conv2(self.act(self.norm2(out)))
        out = self.conv3(self.act(self.norm3(out)))
        return out + self.skip(x)


class BiFusion(nn.Module):
    """BiFusion module of TransFuse: fuses a CNN feature map ``g`` and a transformer feature map ``t`` of one scale.

    - ``"channel"``: squeeze-and-excitation channel attention on ``t`` (MONAI's :class:`ChannelSELayer`), since
      self-attention models global context but weakly re-weights channels;
    - ``"spatial"``: CBAM spatial attention on ``g``, to enhance local details and suppress irrelevant regions;
    - ``"hadamard"``: the bilinear interaction ``b = Conv3x3(W_g g * W_t t)`` of 1x1 projections (each with BN);
    - the (attended) inputs and ``b`` are concatenated and passed through a :class:`PreActBottleneck`, then
      ``Dropout2d``.

    With ``components=()`` this is the plain "Concat+Res" fusion of the paper's ablation.

    Args:
        spatial_dims: number of spatial dimensions (TransFuse is 2D).
        cnn_channels: channels of the CNN feature ``g``.
        transformer_channels: channels of the transformer feature ``t``.
        out_channels: channels of the fused output.
        hidden_channels: channels of the Hadamard-product branch. Defaults to ``out_channels``.
        reduction: SE reduction ratio of the channel attention.
        components: the enabled optional parts, a subset of :data:`BIFUSION_COMPONENTS`.
        dropout: probability of the output ``Dropout2d``.
    """

    def __init__(
        self,
        spatial_dims: int,
        cnn_channels: int,
        transformer_channels: int,
        out_channels: int,
        hidden_channels: int | None = None,
        reduction: int = 1,
        components: Sequence[str] = BIFUSION_COMPONENTS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        components = tuple(components)
        unknown = sorted(set(components) - set(BIFUSION_COMPONENTS))
        if unknown:
            raise ValueError(f"Unknown BiFusion component(s) {unknown}; choose from {list(BIFUSION_COMPONENTS)}.")
        self.components = components
        hidden_channels = out_channels if hidden_channels is None else hidden_channels
        act = ("relu", {"inplace": True})

        self.spatial_attention: nn.Module = SpatialAttention(spatial_dims) if "spatial" in components else nn.Identity()
        self.channel_attention: nn.Module = (
            ChannelSELayer(spatial_dims, transformer_channels, r=reduction) if "channel" in components else nn.Identity()
        )
        self.use_hadamard = "hadamard" in components
        fused_channels = cnn_channels + transformer_channels
        # None when unused: TorchScript then compiles the forward without the branch
        self.proj_cnn = self.proj_transformer = self.hadamard_conv = None
        if self.use_hadamard:
            self.proj_cnn = Convolution(spatial_dims, cnn_channels, hidden_channels, kernel_size=1, act=None, norm="batch")
            self.proj_transformer = Convolution(
                spatial_dims, transformer_channels, hidden_channels, kernel_size=1, act=None, norm="batch"
            )
            self.hadamard_conv = Convolution(
                spatial_dims, hidden_channels, hidden_channels, kernel_size=3, act=act, norm="batch", adn_ordering="NA"
            )
            fused_channels += hidden_channels
        self.residual = PreActBottleneck(spatial_dims, fused_channels, out_channels)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)

    def forward(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """
        Args:
            g: CNN features, shape ``(B, cnn_channels, H, W)``.
            t: transformer features, shape ``(B, transformer_channels, H, W)``.
        """
        parts = [self.spatial_attention(g), self.channel_attention(t)]
        if self.hadamard_conv is not None:
            parts.append(self.hadamard_conv(self.proj_cnn(g) * self.proj_transformer(t)))
        return self.dropout(self.residual(torch.cat(parts, dim=1)))
