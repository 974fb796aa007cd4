# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Volumes through a 2D network, slice by slice: MONAI's ``SliceInferer`` with output checks, inside
:class:`~transfuse_monai.inferers.AutocastInferer`.

2.5D networks (neighbouring slices as channels) need no inferer of their own: the pre-processing stacks the
neighbours of every slice with :class:`~transfuse_monai.transforms.slices.StackSliceNeighboursd`, as in training,
and the slices this inferer cuts out carry them as channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from monai.inferers import SliceInferer
from monai.utils import ensure_tuple

from transfuse_monai.inferers.autocast import AutocastInferer

__all__ = ["VolumeSliceInferer", "slice_inferer"]


class VolumeSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` that checks what the 2D network returns per slice.

    The network receives batches of slices ``(n, C, H, W)`` and must return logits ``(n, K, H', W')`` (a tensor, or
    a tuple/dict of such tensors). A network in training mode may return something else: TransFuse returns its
    stacked deep-supervision heads ``(n, 3, K, H, W)`` there, which SliceInferer would misplace; this inferer
    raises a clear error instead. Inference over volumes is for eval mode (``network.eval()``).

    Args:
        spatial_dim: spatial axis of the volume ``(B, C, H, W, D)`` to slide over (0, 1 or 2; 2 for axial slices of
            RAS volumes).
        args: positional arguments of :class:`~monai.inferers.SlidingWindowInferer` (``roi_size``, ...).
        kwargs: keyword arguments of :class:`~monai.inferers.SlidingWindowInferer`.

    Raises:
        ValueError: ``spatial_dim`` is not 0, 1 or 2, or ``roi_size`` is not 2D.
    """

    def __init__(self, spatial_dim: int = 2, *args: Any, **kwargs: Any) -> None:
        if isinstance(spatial_dim, bool) or spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2 (an axis of (H, W, D)), got {spatial_dim!r}.")
        super().__init__(spatial_dim, *args, **kwargs)
        if len(self.orig_roi_size) != 2:
            raise ValueError(
                f"roi_size must be the 2D size of the slices' windows, e.g. (320, 320) or (-1, -1) for whole "
                f"slices, got {tuple(self.orig_roi_size)}."
            )

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Args:
            inputs: volumes ``(B, C, H, W, D)``.
            network: the 2D network, in eval mode.
            args: optional args passed to ``network``.
            kwargs: optional keyword args passed to ``network``.

        Returns:
            the network's outputs assembled into volumes ``(B, K, H, W, D)``.

        Raises:
            ValueError: ``inputs`` are not batched volumes, or the network's outputs are not ``(n, K, H, W)``.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 5:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"slice inference needs batched volumes (B, C, H, W, D), got {shape}.")
        return super().__call__(inputs, network, *args, **kwargs)

    def network_wrapper(self, network: Callable[..., Any], x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run ``network`` on the slices of a window ``x`` and check its outputs (see the class docstring)."""
        out = super().network_wrapper(network, x, *args, **kwargs)
        values = out.values() if isinstance(out, Mapping) else (out,) if isinstance(out, torch.Tensor) else out
        for value in values:
            if not isinstance(value, torch.Tensor) or value.dim() != 5:
                shape = tuple(value.squeeze(self.spatial_dim + 2).shape) if isinstance(value, torch.Tensor) else None
                raise ValueError(
                    f"the network returned {shape if shape else type(value).__name__} for slices of shape "
                    f"{tuple(x.squeeze(self.spatial_dim + 2).shape)}; slice inference needs (n, K, H, W) logits per "
                    "slice. TransFuse returns its stacked deep-supervision heads (n, 3, K, H, W) in training mode: "
                    "call network.eval() before inference."
                )
        return out


def slice_inferer(
    roi_size: Sequence[int] = (-1, -1),
    sw_batch_size: int = 16,
    spatial_dim: int = 2,
    amp: bool = False,
    dtype: torch.dtype | str | None = None,
    channels_last: bool = False,
    **kwargs: Any,
) -> AutocastInferer:
    """Slice-by-slice inference of a 2D network over volumes, optionally under autocast and channels-last.

    ``AutocastInferer(VolumeSliceInferer(...))``: the volume ``(B, C, H, W, D)`` is cut into slices along
    ``spatial_dim``, ``sw_batch_size`` slices go through the network at a time, and the logits are assembled into
    ``(B, K, H, W, D)`` on the input's grid (so MONAI's ``Invertd`` can map them back to the original image). Any
    number of slices works; the batch size does not change the result (eval mode).

    Example (prostate MRI: in-plane 320x320 after ``Resized(spatial_size=(320, 320, -1))``)::

        inferer = slice_inferer(sw_batch_size=16, amp=True)
        logits = inferer(volume, network.eval())        # (B, 3, 320, 320, D)

    Args:
        roi_size: in-plane window size; ``(-1, -1)`` (default) takes whole slices, which suits volumes resized
            in-plane to the network's input size. A smaller window slides in-plane (``overlap``, ``mode`` in
            ``kwargs``).
        sw_batch_size: number of slices per network call.
        spatial_dim: axis of ``(H, W, D)`` to slice along (2: axial slices of RAS volumes).
        amp: autocast (bfloat16 on CPU, float16 on CUDA, see :class:`AutocastInferer`).
        dtype: autocast dtype overriding the device default.
        channels_last: give the network channels-last slices (pair with a channels-last network).
        kwargs: other arguments of :class:`~monai.inferers.SlidingWindowInferer` (``sw_device``, ``device``,
            ``overlap``, ``mode``, ``padding_mode``, ...).

    Returns:
        the inferer; outputs are float32.

    Raises:
        ValueError: invalid ``roi_size``, ``spatial_dim`` or ``sw_batch_size``.
    """
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}.")
    inner = VolumeSliceInferer(spatial_dim, roi_size=ensure_tuple(roi_size), sw_batch_size=sw_batch_size, **kwargs)
    return AutocastInferer(inner, enabled=amp, dtype=dtype, channels_last=channels_last)
