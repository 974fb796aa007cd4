# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The model zoo of the inference benchmark: which networks are compared and how each is built.

Every builder takes ``(size, args)`` (the input size and the parsed command line) and returns a 2D network with 3
input channels and 1 output channel, random weights; :func:`calibrate_batchnorm` then gives it realistic BatchNorm
statistics and :func:`count_gmacs` its multiply-accumulates.
"""

from __future__ import annotations

import copy
import importlib
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import sys_path_entry

#: the model every ratio of the report is taken to (with the ``eager`` path)
REFERENCE_MODEL = "transfuse_s"


def _transfuse(variant: str) -> Callable:
    def build(size, args):
        from transfuse_monai.networks.nets import TransFuse

        return TransFuse(img_size=size, variant=variant)

    return build


def _unet(size, args):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2),
                num_res_units=2)


def _attention_unet(size, args):
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(2, 3, 1, channels=(64, 128, 256, 512, 1024), strides=(2, 2, 2, 2))


def _flexible_unet(size, args):
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(3, 1, backbone="resnet34", pretrained=False)


def _swin_unetr(size, args):
    from monai.networks.nets import SwinUNETR

    importlib.import_module("einops")  # SwinUNETR's optional dependency: fail at build time with a clear message
    return SwinUNETR(in_channels=3, out_channels=1, spatial_dims=2, feature_size=48)


class _TokenGrid(torch.Tensor):
    """The authors' transformer output; their ``view(B, -1, 12, 16)`` is redirected to the real token grid."""

    grid: tuple[int, int] = (12, 16)

    def view(self, *shape):
        if len(shape) == 4 and tuple(shape[2:]) == (12, 16):
            shape = (shape[0], shape[1], *self.grid)
        return self.as_subclass(torch.Tensor).view(*shape)


_AUTHORS_MODULE = None


def _import_authors(repo: str):
    """Import ``lib.TransFuse`` from the authors' checkout without leaving their timm model names registered."""
    global _AUTHORS_MODULE
    if _AUTHORS_MODULE is None:
        import timm.models._registry as registry

        snapshot = {k: copy.copy(v) for k, v in vars(registry).items() if k.startswith(("_model", "_module"))}
        try:
            with sys_path_entry(repo), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _AUTHORS_MODULE = importlib.import_module("lib.TransFuse")
        finally:
            for k, v in snapshot.items():
                setattr(registry, k, v)
    return _AUTHORS_MODULE


class AuthorsTransFuseS(nn.Module):
    """The authors' ``TransFuse_S`` adapted to an input size (position embedding and token grid); returns ``map_2``."""

    def __init__(self, module, size: tuple[int, int]) -> None:
        super().__init__()
        self.net = module.TransFuse_S(num_classes=1, pretrained=False)
        grid = (size[0] // 16, size[1] // 16)
        if grid != (12, 16):
            vit = self.net.transformer
            pe = vit.pos_embed.detach()  # (1, 192, C): their 12x16 grid, no class token
            c = pe.shape[-1]
            pe = pe.transpose(1, 2).reshape(1, c, 12, 16)
            pe = F.interpolate(pe, size=grid, mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
            vit.pos_embed = nn.Parameter(pe.contiguous())
            token_grid = type("_TokenGrid", (_TokenGrid,), {"grid": grid})
            vit.register_forward_hook(lambda mod, inp, out: out.as_subclass(token_grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[2]


def _authors_s(size, args):
    if not args.authors_repo:
        raise RuntimeError("--authors-repo not given")
    return AuthorsTransFuseS(_import_authors(args.authors_repo), size)


def _import_checkout(repo: str, module: str):
    """Import ``module`` (e.g. ``lib.PraNet_Res2Net``) from a peer's checkout. The peers all name their package
    ``lib``: any ``lib`` modules already imported (another peer's) are set aside during the import and restored
    after, and the peer's own are taken out of ``sys.modules`` again, so peers never see each other's code."""
    def libs() -> dict:
        return {k: sys.modules[k] for k in list(sys.modules) if k == "lib" or k.startswith("lib.")}

    saved = libs()
    for k in saved:
        del sys.modules[k]
    try:
        with sys_path_entry(repo), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    finally:
        for k in libs():
            del sys.modules[k]
        sys.modules.update(saved)


class LastHead(nn.Module):
    """A peer network whose forward returns several deep-supervision maps; keeps the one its authors predict with."""

    def __init__(self, net: nn.Module, index: int = -1) -> None:
        super().__init__()
        self.net, self.index = net, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[self.index]


def _pranet(size, args):
    """PraNet (Res2Net-50 v1b), random weights: its constructor's ImageNet download is turned off."""
    if not getattr(args, "pranet_repo", None):
        raise RuntimeError("--pranet-repo not given")
    mod = _import_checkout(args.pranet_repo, "lib.PraNet_Res2Net")
    backbone = mod.res2net50_v1b_26w_4s
    mod.res2net50_v1b_26w_4s = lambda pretrained=False, **kw: backbone(pretrained=False, **kw)
    try:
        return LastHead(mod.PraNet(channel=32))  # lateral_map_2: the map PraNet's test script thresholds
    finally:
        mod.res2net50_v1b_26w_4s = backbone


def _hardnet_mseg(size, args):
    """HarDNet-MSEG (HarDNet-68), random weights: its constructor's checkpoint load is turned off."""
    if not getattr(args, "hardnet_repo", None):
        raise RuntimeError("--hardnet-repo not given")
    mod = _import_checkout(args.hardnet_repo, "lib.HarDMSEG")
    backbone = mod.hardnet
    mod.hardnet = lambda arch=68, pretrained=True, **kw: backbone(arch=arch, pretrained=False, **kw)
    try:
        return mod.HarDMSEG(channel=32)
    finally:
        mod.hardnet = backbone


#: models built from a checkout of their authors' code, and the command-line option that names the checkout
CHECKOUT_OPTION = {"authors_s": "authors_repo", "pranet": "pranet_repo", "hardnet_mseg": "hardnet_repo"}

MODELS: dict[str, tuple[str, Callable]] = {
    "transfuse_s": ("TransFuse-S", _transfuse("S")),
    "transfuse_l": ("TransFuse-L", _transfuse("L")),
    "transfuse_lstar": ("TransFuse-L*", _transfuse("L*")),
    "unet": ("MONAI UNet", _unet),
    "attention_unet": ("MONAI AttentionUnet", _attention_unet),
    "flexible_unet": ("MONAI FlexibleUNet (ResNet-34)", _flexible_unet),
    "swin_unetr": ("MONAI SwinUNETR (48)", _swin_unetr),
    "authors_s": ("authors' TransFuse_S", _authors_s),
    "pranet": ("PraNet (authors' code)", _pranet),
    "hardnet_mseg": ("HarDNet-MSEG (authors' code)", _hardnet_mseg),
}


def calibrate_batchnorm(model: nn.Module, size, batches: int = 1, batch: int = 2) -> int:
    """Set BatchNorm running statistics from a few train-mode forward passes on random images (cumulative average),
    so that a random-weight network in eval mode has normalised activations and logits of a realistic scale (with
    the default mean 0 / variance 1 statistics they grow through residual stages to |100| and more, which would make
    the parity checks meaningless). Returns the number of BatchNorm layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(99)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, *size, generator=g))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
    return len(bns)


def count_gmacs(model: nn.Module, x: torch.Tensor) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(x)
        return counter.get_total_flops() / 2 / 1e9
    except Exception:  # pragma: no cover - an op without a flop formula must not stop the benchmark
        return None
