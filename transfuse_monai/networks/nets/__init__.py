"""TransFuse networks."""

from transfuse_monai.networks.nets.checkpoint import (
    is_authors_state_dict,
    load_transfuse_checkpoint,
    resample_pos_embed_in_state_dict,
)
from transfuse_monai.networks.nets.convert import convert_authors_state_dict
from transfuse_monai.networks.nets.transfuse import (
    BRANCHES,
    COMPOSITIONS,
    TABLE5_ABLATIONS,
    TABLE5_DESCRIPTIONS,
    TRANSFUSE_PRESETS,
    TransFuse,
    pretrained_normalization,
)

__all__ = [
    "BRANCHES",
    "COMPOSITIONS",
    "TABLE5_ABLATIONS",
    "TABLE5_DESCRIPTIONS",
    "resample_pos_embed_in_state_dict",
    "TRANSFUSE_PRESETS",
    "TransFuse",
    "convert_authors_state_dict",
    "is_authors_state_dict",
    "load_transfuse_checkpoint",
    "pretrained_normalization",
]
