"""Inferers: wrappers that add fast execution paths to any MONAI inferer."""

from transfuse_monai.inferers.autocast import AutocastInferer

__all__ = ["AutocastInferer"]
