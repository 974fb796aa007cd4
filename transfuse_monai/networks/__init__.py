"""Networks of transfuse-monai."""

from transfuse_monai.networks.nets import (
    TRANSFUSE_PRESETS,
    TransFuse,
    convert_authors_state_dict,
    pretrained_normalization,
)

__all__ = ["TRANSFUSE_PRESETS", "TransFuse", "convert_authors_state_dict", "pretrained_normalization"]
