"""Engine helpers: multi-scale training iterations."""

from transfuse_monai.engines.multiscale import MultiScaleIteration, scaled_size

__all__ = ["MultiScaleIteration", "scaled_size"]
