"""Networks of transfuse-monai."""

from transfuse_monai.networks.nets import (
    TRANSFUSE_PRESETS,
    TransFuse,
    convert_authors_state_dict,
    pretrained_normalization,
)
from transfuse_monai.networks.uncertainty import enable_mc_dropout

__all__ = [
    "TRANSFUSE_PRESETS",
    "TransFuse",
    "convert_authors_state_dict",
    "enable_mc_dropout",
    "pretrained_normalization",
]
