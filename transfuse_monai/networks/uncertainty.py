# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Monte Carlo dropout (Gal and Ghahramani, 2016): repeated stochastic forward passes estimate how unsure a trained
network is of an input, the epistemic uncertainty that active learning ranks unlabelled images by."""

from __future__ import annotations

from torch import nn

__all__ = ["enable_mc_dropout"]


def enable_mc_dropout(network: nn.Module) -> int:
    """Put ``network`` in evaluation mode with its dropout layers sampling.

    Everything but dropout behaves as at inference: BatchNorm uses its running statistics (training-mode BatchNorm on
    one image would normalise with that image's own statistics and shift every pass alike), and TransFuse returns
    its final head only (in training mode it stacks its deep-supervision heads).

    Args:
        network: the trained network.

    Returns:
        the number of dropout layers that sample (rate above 0).

    Raises:
        ValueError: ``network`` has no dropout layer with a positive rate, so every pass would be identical.
    """
    network.eval()
    active = 0
    for module in network.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
            active += module.p > 0
    if not active:
        raise ValueError(
            f"{type(network).__name__} has no dropout layer with a positive rate: Monte Carlo dropout needs one "
            "(TransFuse: dropout > 0)."
        )
    return active
