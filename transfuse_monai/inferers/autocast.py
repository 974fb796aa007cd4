# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""An inferer wrapper for mixed precision on any device and channels-last inputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from monai.inferers import Inferer, SimpleInferer

__all__ = ["AutocastInferer"]

_DEFAULT_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}


class AutocastInferer(Inferer):
    """Run another inferer under :func:`torch.autocast` for the inputs' device, optionally on channels-last inputs.

    MONAI's engines implement ``amp`` with ``torch.autocast("cuda")`` only, so on a CPU their ``amp`` flag does
    nothing. This wrapper autocasts on the device the inputs live on, in bfloat16 on CPU by default (no gradient
    scaling needed, so it also serves training's forward pass) and float16 on CUDA. Because MONAI's
    :class:`~monai.engines.SupervisedTrainer` calls its inferer for the training forward pass too, the same object
    speeds up training, validation and inference. On CUDA, training in float16 needs gradient scaling: keep using the
    engine's own ``amp`` there (which brings a ``GradScaler``) and leave this wrapper disabled, as the bundles do.

    ``channels_last`` makes the 4D tensors the network receives channels-last (NHWC) in memory: the inputs
    themselves with ``SimpleInferer``, the batched windows of a ``SlidingWindowInferer``, the slices a
    ``SliceInferer`` cuts from 5D volumes (the network is called through a small wrapper that converts its first
    argument). With the network's convolution weights also channels-last
    (``network.to(memory_format=torch.channels_last)``), oneDNN and cuDNN pick their NHWC kernels. Values are
    unchanged up to float rounding. Tensors of other ranks are passed as they are.

    Outputs are cast back to ``output_dtype`` (float32 by default) so that losses, post-processing and writers
    downstream see the same dtype whichever path ran.

    Args:
        inferer: the inferer to wrap (``SimpleInferer()`` by default); e.g. a ``SlidingWindowInferer``.
        enabled: autocast on or off (off: a plain call, plus the channels-last conversion if asked).
        dtype: autocast dtype; None picks bfloat16 on CPU and float16 on CUDA.
        channels_last: give the network its 4D inputs in ``torch.channels_last`` memory format.
        output_dtype: dtype of floating-point outputs; None keeps what the network returned.

    Example::

        net = TransFuse().eval().to(memory_format=torch.channels_last)
        inferer = AutocastInferer(SimpleInferer(), enabled=True, channels_last=True)
        logits = inferer(images, net)  # bfloat16 compute on CPU, float32 logits
    """

    def __init__(
        self,
        inferer: Inferer | None = None,
        enabled: bool = True,
        dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        output_dtype: torch.dtype | str | None = torch.float32,
    ) -> None:
        super().__init__()
        self.inferer = SimpleInferer() if inferer is None else inferer
        if not callable(self.inferer):
            raise TypeError(f"inferer must be a callable MONAI Inferer, got {type(self.inferer).__name__}.")
        self.enabled = bool(enabled)
        self.dtype = _as_dtype(dtype, "dtype")
        if self.dtype is not None and self.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16 (or None), got {self.dtype}.")
        self.channels_last = bool(channels_last)
        self.output_dtype = _as_dtype(output_dtype, "output_dtype")

    def autocast_dtype(self, device_type: str) -> torch.dtype:
        """The autocast dtype used for inputs on ``device_type``."""
        if self.dtype is not None:
            return self.dtype
        if device_type not in _DEFAULT_DTYPES:
            raise ValueError(
                f"AutocastInferer has no default dtype for device type '{device_type}'; pass dtype explicitly."
            )
        return _DEFAULT_DTYPES[device_type]

    def __call__(self, inputs: torch.Tensor, network: nn.Module | Any, *args: Any, **kwargs: Any) -> Any:
        """
        Args:
            inputs: model input data for inference.
            network: the model, or any callable the wrapped inferer accepts.
            args: optional args to be passed to ``network`` through the wrapped inferer.
            kwargs: optional keyword args to be passed to the wrapped inferer.
        """
        if self.channels_last:
            network = _ChannelsLastInputs(network)
        if not self.enabled:
            return self._cast(self.inferer(inputs, network, *args, **kwargs))
        device_type = inputs.device.type if isinstance(inputs, torch.Tensor) else "cpu"
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype(device_type)):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return self._cast(outputs)

    def _cast(self, outputs: Any) -> Any:
        if self.output_dtype is None:
            return outputs
        if isinstance(outputs, torch.Tensor):
            return outputs.to(self.output_dtype) if outputs.is_floating_point() else outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self._cast(o) for o in outputs)
        if isinstance(outputs, dict):
            return {k: self._cast(v) for k, v in outputs.items()}
        return outputs


class _ChannelsLastInputs:
    """Calls ``network`` with its first argument made channels-last when it is a 4D tensor."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x, *args, **kwargs)


def _as_dtype(value: torch.dtype | str | None, name: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        dtype = getattr(torch, value.replace("torch.", ""), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    raise ValueError(f"{name} must be a torch.dtype or its name (e.g. 'bfloat16'), got {value!r}.")
