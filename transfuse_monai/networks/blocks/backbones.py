# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""timm backbones of the two TransFuse branches, with hub or local-file pretrained weights."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # module level, so that TorchScript compiles it into the scripted network
    from timm.layers import resample_abs_pos_embed
except ImportError:  # runtimes that only run exported TorchScript (the MONAI Deploy environment) have no timm
    resample_abs_pos_embed = None

__all__ = [
    "create_timm_model",
    "pretrained_mean_std",
    "select_feature_indices",
    "create_cnn_encoder",
    "resample_pos_embed",
    "ViTEncoder",
    "DeviceAwareAttention",
]


def create_timm_model(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None, **kwargs):
    """Create a timm model, optionally with pretrained weights.

    Args:
        name: timm model name, e.g. ``"resnet34"`` or ``"deit_small_patch16_224"`` (a pretrained tag such as
            ``"resnet34.tv_in1k"`` selects specific weights).
        pretrained: load the model's default pretrained weights, as timm does (Hugging Face hub, or a download URL
            for models without a hub copy), with an offline-first policy: weights already in the local cache
            (``huggingface_hub``'s ``HF_HUB_CACHE``, by default ``$HF_HOME/hub``; ``$TORCH_HOME/hub/checkpoints``
            for URL weights) are loaded from there without any network access; otherwise the hub is first probed
            for a few seconds and, when it cannot be reached (or ``HF_HUB_OFFLINE=1``), a ``RuntimeError`` explains
            the ways out instead of timm's long retries.
        weights: path of a local checkpoint of the full timm (or torchvision / DeiT) classification model, for
            offline use. It goes through timm's own checkpoint filtering, so position embeddings are resampled to
            ``img_size`` and the first convolution adapted to ``in_chans`` exactly as for hub weights. PyTorch
            (``.pth``/``.bin``) and safetensors state dicts are accepted, and ``.npz`` JAX releases for ViTs.
        kwargs: forwarded to :func:`timm.create_model`.

    Raises:
        FileNotFoundError: ``weights`` is given but is not a file.
        RuntimeError: ``pretrained`` weights are neither cached locally nor downloadable (no network access).
    """
    import timm

    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Pretrained weights file for timm model '{name}' not found: {path}")
        # a .npz file is an original JAX/Flax ViT release (timm's custom loader); anything else a torch state dict
        overlay = {"file": path, "custom_load": path.endswith(".npz")}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    source = None
    if pretrained and not {"pretrained_cfg", "pretrained_cfg_overlay"} & set(kwargs):
        source = _PretrainedSource.find(name)
    if source is not None:
        cached = source.cached_file()
        if cached is not None:  # load the cached file directly: no hub request at all
            overlay = {"file": cached, "custom_load": source.custom_load}
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        source.check_reachable()
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def pretrained_mean_std(name: str, in_channels: int = 3) -> dict[str, list[float]]:
    """The input normalisation of timm model ``name``'s default pretrained weights, for ``in_channels`` channels.

    The per-channel ``mean`` and ``std`` come from the model's ``pretrained_cfg`` (the weights
    :func:`create_timm_model` loads with ``pretrained=True``: ImageNet's ``(0.485, 0.456, 0.406)`` /
    ``(0.229, 0.224, 0.225)`` for ResNet-34 and DeiT, ``0.5`` for BiT and ViT-augreg), adapted to another number of
    input channels as timm adapts the pretrained first convolution (``timm.models.adapt_input_conv``): one channel
    sums the colour filters, so a grey input stands for all colours and takes their average statistics (ImageNet:
    ``0.449`` / ``0.226``, ``sum(values) / len(values)``, which gives exactly these floats); with more channels timm
    repeats the colour filters cyclically, so channel ``i`` takes the statistics of colour channel ``i % 3``.

    Args:
        name: timm model name, e.g. ``"resnet34"`` (a tag such as ``"resnet34.tv_in1k"`` selects specific weights).
        in_channels: number of input channels of the network.

    Returns:
        ``{"mean": [...], "std": [...]}``, one Python float per input channel (the ``subtrahend`` and ``divisor`` of
        MONAI's ``NormalizeIntensityd`` with ``channel_wise=True``).

    Raises:
        ModuleNotFoundError: timm is not installed (a runtime that only runs an exported TorchScript file).
        ValueError: ``in_channels`` is not positive, or ``name`` has no pretrained config with a mean and std.
    """
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}.")
    try:
        from timm.models import get_pretrained_cfg
    except ImportError as err:
        raise ModuleNotFoundError(
            f"The input normalisation of '{name}' comes from timm's pretrained config, and timm is not installed. "
            "Install timm, or use a TorchScript file exported with `python -m transfuse_monai.export`, whose "
            "embedded inference.json carries the values."
        ) from err
    cfg = get_pretrained_cfg(name)
    mean, std = (getattr(cfg, "mean", None), getattr(cfg, "std", None)) if cfg is not None else (None, None)
    if not mean or not std or len(mean) != len(std):
        raise ValueError(f"timm model '{name}' has no pretrained config with a per-channel mean and std.")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if int(in_channels) == 1 and len(mean) > 1:
        return {"mean": [sum(mean) / len(mean)], "std": [sum(std) / len(std)]}
    return {"mean": [mean[i % len(mean)] for i in range(in_channels)],
            "std": [std[i % len(std)] for i in range(in_channels)]}


class _PretrainedSource:
    """Where timm takes a model's default pretrained weights from, and where they are cached locally.

    Follows timm's own choice (``timm.models._builder._resolve_pretrained_source``): the Hugging Face hub when the
    pretrained config has a ``hf_hub_id`` and ``huggingface_hub`` is installed, else the config's download URL.
    """

    #: seconds to wait for the hub before declaring it unreachable
    probe_timeout = 3.0

    @classmethod
    def find(cls, name: str) -> _PretrainedSource | None:
        """The source of ``name``'s default weights; ``None`` where timm's own handling is left alone (names with a
        source prefix such as ``"hf-hub:"``, models without a pretrained config or without downloadable weights)."""
        from timm.models import get_pretrained_cfg

        if ":" in name:
            return None
        cfg = get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url) or cfg.source not in (None, "", "timm"):
            return None
        return cls(name, cfg)

    def __init__(self, name: str, cfg) -> None:
        self.name = name
        self.tagged_name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
        self.hub_id = None
        try:
            from huggingface_hub import constants as hf_constants
        except ImportError:
            hf_constants = None
        if cfg.hf_hub_id and hf_constants is not None:
            hub_id, _, revision = cfg.hf_hub_id.partition("@")
            self.hub_id, self.revision = hub_id, revision or None
            # timm asks for the safetensors file first, then the PyTorch one (timm.models._hub.load_state_dict_from_hf)
            default_files = ["model.safetensors", "pytorch_model.bin"]
            self.filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else default_files
            self.cache_dir = str(hf_constants.HF_HUB_CACHE)
            self.endpoint = str(hf_constants.ENDPOINT)
            self.offline = bool(hf_constants.HF_HUB_OFFLINE)
            self.custom_load = False  # hub files are state dicts
        else:
            self.url = str(cfg.url)
            self.cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
            self.endpoint = self.url
            self.offline = False
            self.custom_load = bool(cfg.custom_load)

    def describe(self) -> str:
        if self.hub_id is not None:
            files = " or ".join(self.filenames)
            return f"Hugging Face hub repository '{self.hub_id}' ({files}, timm model '{self.tagged_name}')"
        return f"'{self.url}' (timm model '{self.tagged_name}')"

    def cached_file(self) -> str | None:
        """The locally cached weight file, or ``None``."""
        if self.hub_id is None:
            path = os.path.join(self.cache_dir, os.path.basename(self.url))
            return path if os.path.isfile(path) else None
        from huggingface_hub import try_to_load_from_cache

        for filename in self.filenames:
            path = try_to_load_from_cache(self.hub_id, filename, cache_dir=self.cache_dir, revision=self.revision)
            if isinstance(path, str) and os.path.isfile(path):
                return path
        return None

    def check_reachable(self) -> None:
        """Raise the ``RuntimeError`` with the ways out unless the download server answers within a few seconds."""
        import urllib.error
        import urllib.request

        if self.offline:
            reason = "HF_HUB_OFFLINE is set"
        else:
            try:  # any HTTP answer, even an error status, proves the server reachable (proxy variables honoured)
                request = urllib.request.Request(self.endpoint, method="HEAD")
                with urllib.request.urlopen(request, timeout=self.probe_timeout):
                    return
            except urllib.error.HTTPError as err:
                err.close()
                return
            except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, malformed endpoint
                reason = f"{self.endpoint} cannot be reached ({getattr(err, 'reason', err)})"
        raise RuntimeError(
            f"Pretrained weights of '{self.name}' are needed from the {self.describe()}, but they are not in the "
            f"local cache ({self.cache_dir}) and {reason}. Either train without them: --pretrained false; or give "
            "local weight files of the backbones: --cnn_weights <file> and/or --vit_weights <file> (state dicts of "
            "the timm classification models, e.g. their model.safetensors); or fill the cache on a machine with "
            f"network access (python -c \"import timm; timm.create_model('{self.tagged_name}', pretrained=True)\") "
            "and copy it here (HF_HOME / HF_HUB_CACHE choose its location)."
        )


def select_feature_indices(name: str, reductions: Sequence[int] = (4, 8, 16)) -> list[int]:
    """Indices of a timm CNN's ``features_only`` outputs whose strides are ``reductions``.

    The model is instantiated on the meta device, so nothing is allocated or downloaded.

    Raises:
        ValueError: the model has no feature map at one of the requested strides.
    """
    import timm

    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False)
    available = list(probe.feature_info.reduction())
    missing = [r for r in reductions if r not in available]
    if missing:
        raise ValueError(
            f"CNN '{name}' has feature maps at strides {available}; TransFuse needs strides {list(reductions)} "
            f"(missing {missing}). Pass cnn_out_indices explicitly or choose another CNN."
        )
    return [available.index(r) for r in reductions]


def create_cnn_encoder(
    name: str,
    in_channels: int,
    out_indices: Sequence[int] | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    """A timm ``features_only`` CNN returning feature maps at strides 4, 8 and 16 (its last stage is dropped).

    Args:
        name: timm CNN name (``"resnet34"``, ``"res2net50_26w_4s"``, ``"resnetv2_50x1_bit"``, ...).
        in_channels: number of input channels.
        out_indices: ``features_only`` indices of the stride 4, 8, 16 maps; found automatically when ``None``.
        pretrained: load timm's default pretrained weights (hub).
        weights: local checkpoint path (offline), see :func:`create_timm_model`.
    """
    if out_indices is None:
        out_indices = select_feature_indices(name)
    return create_timm_model(
        name, pretrained=pretrained, weights=weights, features_only=True, out_indices=tuple(out_indices),
        in_chans=in_channels,
    )


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: List[int], old_grid: List[int]) -> torch.Tensor:
    """Resample a class-token-free absolute position embedding from one token grid to another.

    This is timm's :func:`timm.layers.resample_abs_pos_embed` (bicubic, ``align_corners=False``, computed in
    float32, cast back) with ``antialias=False``: every resampling of TransFuse, at run time in
    :class:`ViTEncoder` and when a checkpoint is loaded at another input size, goes through it, so loading a
    checkpoint into a network built for another ``img_size`` and running the original network at that size give the
    same embedding, and the values are those of the bicubic interpolation this package has always used. timm's
    default ``antialias=True`` would change them (its antialiased kernel is PIL's cubic, also when upsampling); timm
    applies it once, when it loads ImageNet weights for another ``img_size`` (``pretrained``, ``weights``).
    TorchScript-compatible.

    Args:
        pos_embed: ``(1, old_grid[0] * old_grid[1], embed_dim)``, tokens in row-major grid order.
        new_grid: target token grid ``[h, w]``.
        old_grid: token grid ``[h, w]`` of ``pos_embed``.

    Returns:
        ``(1, new_grid[0] * new_grid[1], embed_dim)``; ``pos_embed`` itself when the grids are equal.

    Raises:
        ValueError: ``pos_embed`` does not hold ``old_grid[0] * old_grid[1]`` tokens.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"position embedding of shape {list(pos_embed.shape)} does not hold the {old_grid[0]}x{old_grid[1]} "
            "token grid it is said to have; expected (1, h * w, embed_dim)."
        )
    if new_grid[0] == old_grid[0] and new_grid[1] == old_grid[1]:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, [new_grid[0], new_grid[1]], [old_grid[0], old_grid[1]], num_prefix_tokens=0, antialias=False
    )


class DeviceAwareAttention(nn.Module):
    """Multi-head self-attention of a timm ViT block that picks its kernel per call.

    It takes over the layers of a timm ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``attn_drop``, ``norm``,
    ``proj``, ``proj_drop``), so parameters and state-dict keys are unchanged, and computes the same function. Only
    the kernel differs: PyTorch's fused ``scaled_dot_product_attention`` (as timm does), except for reduced precision
    on a CPU, where ``softmax(q k^T * scale) v`` with two batched matrix products is faster. At TransFuse-S's 484
    tokens (352x352) under bfloat16 autocast on a 2-core CPU, the fused CPU kernel takes about 41 ms per forward for
    the 8 blocks against 23 ms for the explicit products; in float32 both take about 21-25 ms, so fp32 keeps the fused
    kernel (``python -m benchmarks models``, ``channels_last+bf16`` path).

    Args:
        attn: the timm ``Attention`` to take the layers from (without gating).
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ValueError("DeviceAwareAttention does not support gated timm attention.")
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = float(attn.scale)
        self.fused_attn = bool(getattr(attn, "fused_attn", True))
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = getattr(attn, "norm", None) or nn.Identity()
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop

    @classmethod
    def can_replace(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a plain timm ``Attention`` this class can take over."""
        from timm.layers import Attention

        return type(module) is Attention and getattr(module, "gate", None) is None

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """
        Args:
            x: tokens ``(B, N, C)``.
            attn_mask: optional attention mask (timm's block interface; masked calls always use the fused kernel).
            is_causal: causal attention (likewise).
        """
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        cpu_reduced = q.device.type == "cpu" and q.dtype != torch.float32
        if (self.fused_attn and not cpu_reduced) or attn_mask is not None or is_causal:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


class ViTEncoder(nn.Module):
    """Transformer branch of TransFuse built from a timm ViT/DeiT: patch embedding, position embedding without a
    class token, the first ``depth`` encoder blocks and the final LayerNorm, reshaped to a feature map.

    The position embedding is kept at the grid of ``img_size // patch_size`` and resampled on the fly when an input of
    another size arrives (:func:`resample_pos_embed`: timm's bicubic resampling), so one model serves several input
    sizes (multi-scale training).

    Args:
        name: timm ViT/DeiT name, e.g. ``"deit_small_patch16_224"``.
        in_channels: number of input channels.
        img_size: the nominal input size ``(H, W)``.
        depth: number of encoder blocks to keep (``None``: all).
        pretrained: load timm's default pretrained weights (hub).
        weights: local checkpoint path (offline), see :func:`create_timm_model`.
        drop_path_rate: stochastic depth rate of the kept blocks.
        patch_size: side of the patches, 16 (the model's own) on images; 1 makes every position of a feature map a
            token, the hybrid ("sequential") use on a CNN's stride-16 map, with timm resampling a pretrained patch
            embedding to it.
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        img_size: Sequence[int],
        depth: int | None = None,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        drop_path_rate: float = 0.0,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        extra = {} if patch_size == 16 else {"patch_size": int(patch_size)}
        vit = create_timm_model(
            name,
            pretrained=pretrained,
            weights=weights,
            in_chans=in_channels,
            img_size=tuple(img_size),
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **extra,
        )
        for attr in ("patch_embed", "pos_embed", "blocks", "norm"):
            if not hasattr(vit, attr) or getattr(vit, attr) is None:
                raise ValueError(f"timm model '{name}' is not a ViT/DeiT with an absolute position embedding.")
        total = len(vit.blocks)
        depth = total if depth is None else int(depth)
        if not 1 <= depth <= total:
            raise ValueError(f"depth must be in [1, {total}] for '{name}', got {depth}.")
        patch = vit.patch_embed.patch_size
        if tuple(patch) != (patch_size, patch_size):
            raise ValueError(
                f"TransFuse needs a {patch_size}x{patch_size} patch embedding; '{name}' uses {tuple(patch)}."
            )
        self.embed_dim: int = int(vit.embed_dim)
        self.grid_size: tuple[int, int] = (int(vit.patch_embed.grid_size[0]), int(vit.patch_embed.grid_size[1]))
        self.patch_embed = vit.patch_embed  # outputs NHWC tokens (timm's dynamic_img_size mode)
        pos = vit.pos_embed.detach()
        if not getattr(vit, "no_embed_class", False):
            pos = pos[:, vit.num_prefix_tokens :]
        self.pos_embed = nn.Parameter(pos.clone())
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = nn.Sequential(*list(vit.blocks)[:depth])
        for block in self.blocks:
            if DeviceAwareAttention.can_replace(getattr(block, "attn", None)):
                block.attn = DeviceAwareAttention(block.attn)
        self.norm = vit.norm
        del vit

    def resampled_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The position embedding at a ``(grid_h, grid_w)`` token grid, shape ``(1, grid_h * grid_w, embed_dim)``."""
        if grid_h == self.grid_size[0] and grid_w == self.grid_size[1]:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, [grid_h, grid_w], [self.grid_size[0], self.grid_size[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` to transformer features ``(B, embed_dim, H/p, W/p)`` (``p``: the patch size)."""
        x = self.patch_embed(x)  # (B, H/p, W/p, E)
        b, gh, gw, e = x.shape
        x = self.pos_drop(x.reshape(b, gh * gw, e) + self.resampled_pos_embed(gh, gw))
        x = self.norm(self.blocks(self.norm_pre(x)))
        return x.transpose(1, 2).reshape(b, e, gh, gw)
