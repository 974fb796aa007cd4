"""transfuse-monai: the TransFuse segmentation network (Zhang et al., MICCAI 2021) as MONAI components and bundles."""

__version__ = "0.1.0"
