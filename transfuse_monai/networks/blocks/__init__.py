"""Building blocks of TransFuse."""

from transfuse_monai.networks.blocks.backbones import (
    DeviceAwareAttention,
    ViTEncoder,
    create_cnn_encoder,
    create_timm_model,
    pretrained_mean_std,
    resample_pos_embed,
    select_feature_indices,
)
from transfuse_monai.networks.blocks.bifusion import BIFUSION_COMPONENTS, BiFusion, PreActBottleneck, SpatialAttention
from transfuse_monai.networks.blocks.upsample import AttentionGatedUpBlock, ResidualUpBlock

__all__ = [
    "resample_pos_embed",
    "BIFUSION_COMPONENTS",
    "AttentionGatedUpBlock",
    "BiFusion",
    "DeviceAwareAttention",
    "PreActBottleneck",
    "ResidualUpBlock",
    "SpatialAttention",
    "ViTEncoder",
    "create_cnn_encoder",
    "create_timm_model",
    "pretrained_mean_std",
    "select_feature_indices",
]
