"""A stand-in for the paper authors' ``TransFuse_S`` (github.com/Rayicer/TransFuse, ``lib/TransFuse.py``).

Written independently for the tests: it reproduces the *state-dict layout* (key names, order and shapes) of the
authors' model and the function it computes in eval mode, so that
:func:`transfuse_monai.networks.nets.convert_authors_state_dict` can be checked without the authors' repository. It is
not meant for training (the weight initialisation only aims at non-trivial activations).

Layout summary (authors' names):

* ``resnet``: ResNet-34 (torchvision key names; timm's ``resnet34`` uses the same), ``layer4``/``fc`` removed.
* ``transformer``: DeiT-S without class-token use: ``patch_embed.proj``, ``cls_token`` (unused), ``pos_embed``
  (one token per 16x16 patch, no class token), 8 ``blocks`` and ``norm``.
* ``up1``/``up2``: x2 bilinear upsampling + residual double convolution of the transformer tokens.
* ``up_c``/``up_c_1_1``/``up_c_2_1``: BiFusion (SE on the transformer, spatial attention on the CNN, a Hadamard
  product branch and a bottleneck residual unit).
* ``up_c_1_2``/``up_c_2_2``: attention-gated decoder steps; ``final_x``/``final_1``/``final_2``: the three heads.
"""

from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

__all__ = ["AuthorsTransFuseS"]


class _ConvUnit(nn.Module):
    """``conv`` (same padding) [-> ``bn``] [-> ReLU]."""

    def __init__(self, cin: int, cout: int, k: int, bn: bool = False, relu: bool = True, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.use_relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.use_relu else x


class _Bottleneck(nn.Module):
    """Pre-activation bottleneck ``bn1-relu-conv1(1x1)-bn2-relu-conv2(3x3)-bn3-relu-conv3(1x1)`` plus a skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _ConvUnit(cin, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = _ConvUnit(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = _ConvUnit(mid, cout, 1, relu=False)
        self.skip_layer = _ConvUnit(cin, cout, 1, relu=False)
        self.project = cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (self.skip_layer(x) if self.project else x)


class _Fusion(nn.Module):
    """BiFusion of a CNN map ``g`` (``c_cnn`` channels) and a transformer map ``t`` (``c_vit`` channels)."""

    def __init__(self, c_cnn: int, c_vit: int, reduction: int, c_mid: int, cout: int, drop: float):
        super().__init__()
        self.fc1 = nn.Conv2d(c_vit, c_vit // reduction, 1)
        self.fc2 = nn.Conv2d(c_vit // reduction, c_vit, 1)
        self.spatial = _ConvUnit(2, 1, 7, bn=True, relu=False, bias=False)
        self.W_g = _ConvUnit(c_cnn, c_mid, 1, bn=True, relu=False)
        self.W_x = _ConvUnit(c_vit, c_mid, 1, bn=True, relu=False)
        self.W = _ConvUnit(c_mid, c_mid, 3, bn=True, relu=True)
        self.residual = _Bottleneck(c_cnn + c_vit + c_mid, cout)
        self.dropout = nn.Dropout2d(drop)

    def forward(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        product = self.W(self.W_g(g) * self.W_x(t))
        pooled = torch.stack([g.amax(dim=1), g.mean(dim=1)], dim=1)
        g_att = g * torch.sigmoid(self.spatial(pooled))
        se = self.fc2(F.relu(self.fc1(t.mean(dim=(2, 3), keepdim=True))))
        t_att = t * torch.sigmoid(se)
        return self.dropout(self.residual(torch.cat([g_att, t_att, product], dim=1)))


class _ResDoubleConv(nn.Module):
    """``relu(double_conv(x) + identity(x))`` with 3x3 conv-bn-relu-conv-bn and a 1x1 conv-bn shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
        )
        self.identity = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.double_conv(x) + self.identity(x))


class _Gate(nn.Module):
    """Additive attention gate: ``x * sigmoid(bn(conv(relu(W_g(g) + W_x(x)))))``."""

    def __init__(self, c_g: int, c_x: int, c_mid: int):
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(c_g, c_mid, 1), nn.BatchNorm2d(c_mid))
        self.W_x = nn.Sequential(nn.Conv2d(c_x, c_mid, 1), nn.BatchNorm2d(c_mid))
        self.psi = nn.Sequential(nn.Conv2d(c_mid, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.W_g(g) + self.W_x(x)))


class _UpStep(nn.Module):
    """x2 bilinear upsampling (corner-aligned), optional gated skip concatenation, residual double conv."""

    def __init__(self, c_low: int, cout: int, c_skip: int = 0, gate: bool = False):
        super().__init__()
        self.conv = _ResDoubleConv(c_low + c_skip, cout)
        self.attn_block = _Gate(c_low, c_skip, cout) if gate else None

    def forward(self, low: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        low = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            dy, dx = skip.shape[2] - low.shape[2], skip.shape[3] - low.shape[3]
            if dy or dx:
                low = F.pad(low, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            if self.attn_block is not None:
                skip = self.attn_block(low, skip)
            low = torch.cat([skip, low], dim=1)
        return self.conv(low)


class _PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch)


class _TokenEncoder(nn.Module):
    """DeiT-S style encoder returning all patch tokens (no class token in the sequence)."""

    def __init__(self, grid: tuple[int, int], dim: int = 384, depth: int = 8, heads: int = 6, patch: int = 16):
        super().__init__()
        self.grid = grid
        self.patch_embed = _PatchEmbed(3, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # kept for the layout only
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        for block in self.blocks:  # explicit softmax(q k^T / sqrt(d)) v, bit-exact with the authors' attention
            block.attn.fused_attn = False
        self.norm = norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the token map ``(B, dim, H/16, W/16)``."""
        feat = self.patch_embed.proj(x)
        b, c, h, w = feat.shape
        tokens = feat.flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)


def _head(cin: int, mid: int, classes: int, reduce_first: bool) -> nn.Sequential:
    layers = [_ConvUnit(cin, mid, 1, bn=True)] if reduce_first else []
    first_in = mid if reduce_first else cin
    layers += [_ConvUnit(first_in, mid, 3, bn=True), _ConvUnit(mid, classes, 3, relu=False)]
    return nn.Sequential(*layers)


class AuthorsTransFuseS(nn.Module):
    """Same state-dict layout and (eval-mode) function as the authors' ``TransFuse_S``.

    Args:
        num_classes: output channels of the three heads.
        drop_rate: dropout on the encoder features (half of it in the BiFusion modules).
        align_corners: of the heads' final x4/x16 bilinear upsampling (the authors' code uses True).
        grid: token grid of the position embedding (the authors' 12x16 for 192x256 inputs).
    """

    def __init__(
        self,
        num_classes: int = 1,
        drop_rate: float = 0.2,
        align_corners: bool = True,
        grid: tuple[int, int] = (12, 16),
    ):
        super().__init__()
        self.align_corners = align_corners
        self.resnet = timm.create_model("resnet34", pretrained=False, num_classes=0)
        self.resnet.layer4 = nn.Identity()
        self.resnet.fc = nn.Identity()
        self.transformer = _TokenEncoder(grid)

        self.up1 = _UpStep(384, 128)
        self.up2 = _UpStep(128, 64)
        self.final_x = _head(256, 64, num_classes, reduce_first=True)
        self.final_1 = _head(64, 64, num_classes, reduce_first=False)
        self.final_2 = _head(64, 64, num_classes, reduce_first=False)
        self.up_c = _Fusion(256, 384, 4, 256, 256, drop_rate / 2)
        self.up_c_1_1 = _Fusion(128, 128, 2, 128, 128, drop_rate / 2)
        self.up_c_1_2 = _UpStep(256, 128, 128, gate=True)
        self.up_c_2_1 = _Fusion(64, 64, 1, 64, 64, drop_rate / 2)
        self.up_c_2_2 = _UpStep(128, 64, 64, gate=True)
        self.drop = nn.Dropout2d(drop_rate)

        trunc_normal_(self.transformer.pos_embed, std=0.02)
        trunc_normal_(self.transformer.cls_token, std=0.02)
        for name, module in self.named_children():
            if name not in ("resnet", "transformer"):
                module.apply(self._init_decoder)

    @staticmethod
    def _init_decoder(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def _cnn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.resnet
        x = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        c4 = self.drop(r.layer1(x))
        c8 = self.drop(r.layer2(c4))
        c16 = self.drop(r.layer3(c8))
        return c4, c8, c16

    def _resize(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(map_x, map_1, map_2)``: deepest fusion, transformer branch and final decoder maps."""
        t16 = self.drop(self.transformer(x))
        t8 = self.drop(self.up1(t16))
        t4 = self.drop(self.up2(t8))
        c4, c8, c16 = self._cnn(x)

        f16 = self.up_c(c16, t16)
        d8 = self.up_c_1_2(f16, self.up_c_1_1(c8, t8))
        d4 = self.up_c_2_2(d8, self.up_c_2_1(c4, t4))
        map_x = self._resize(self.final_x(f16), 16)
        map_1 = self._resize(self.final_1(t4), 4)
        map_2 = self._resize(self.final_2(d4), 4)
        return map_x, map_1, map_2
