# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Run options of the bundles, parsed once: booleans from the command line and the fast-path switches.

``python -m monai.bundle run ... --amp false`` hands the config the *string* ``"false"``, which Python takes as true.
Every boolean a bundle exposes is therefore parsed by :func:`as_bool` exactly once, where the config derives the
value it uses, and the three speed switches (``amp``, ``channels_last``, ``compile``) are parsed together by
:class:`FastPaths`, which also derives what each consumer needs::

    "amp": false, "channels_last": "auto", "compile": false,
    "fast_paths": "$transfuse_monai.bundle.FastPaths(@device, @amp, @channels_last, @compile)",
    "network": "$@fast_paths.place(@network_def)",
    "inferer": "$@fast_paths.inferer()",
    "trainer": {..., "amp": "$@fast_paths.engine_amp", "compile": "$@fast_paths.compile"}
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

__all__ = ["as_bool", "FastPaths", "place_network", "default_num_workers"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "null", "")


def as_bool(value) -> bool:
    """Interpret a command-line override as a boolean: booleans, numbers, ``None`` and ``true/false, yes/no, on/off,
    1/0`` (any case).

    Raises:
        ValueError: a string that is none of these, naming the accepted spellings.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"Cannot interpret '{value}' as a boolean; use true or false.")
    return bool(value)


def place_network(network: nn.Module, device: str | torch.device, channels_last: bool = False) -> nn.Module:
    """Move ``network`` to ``device``; with ``channels_last`` also store its 4D weights channels-last (NHWC), which
    oneDNN (CPU) and cuDNN run with their NHWC kernels. Returns the network."""
    fmt = torch.channels_last if as_bool(channels_last) else torch.preserve_format
    return network.to(device, memory_format=fmt)


def default_num_workers(device: str | torch.device, training: bool = True) -> int:
    """Data-loading workers that fit the device: for training, ``min(4, CPUs)`` on CUDA and 0 on a CPU (where
    worker processes compete with the network for the same cores; measured in ``benchmarks/``); for inference
    ``min(2, CPUs)`` (decoding overlaps the forward pass)."""
    cpus = os.cpu_count() or 1
    if not training:
        return min(2, cpus)
    return min(4, cpus) if torch.device(device).type == "cuda" else 0


class FastPaths:
    """The bundles' speed switches for one device, parsed once.

    Args:
        device: where the network runs.
        amp: mixed precision. On CUDA MONAI's engine AMP (float16 autocast with a ``GradScaler``); elsewhere
            bfloat16 autocast through :class:`~transfuse_monai.inferers.AutocastInferer` (MONAI's engines autocast
            only on CUDA).
        channels_last: NHWC weights and inputs; ``"auto"`` or ``None`` turns it on with ``amp`` on a CPU (where it
            pays off) and leaves it off otherwise.
        compile: ``torch.compile`` the network through the MONAI engines' ``compile`` option.

    Attributes:
        amp, channels_last, compile: the parsed switches.
        engine_amp: the ``amp`` argument of MONAI's engines (CUDA only).
        inferer_amp: whether :meth:`inferer` autocasts (any other device).
    """

    def __init__(
        self,
        device: str | torch.device,
        amp: bool | str = False,
        channels_last: bool | str | None = "auto",
        compile: bool | str = False,
    ) -> None:
        self.device = torch.device(device)
        self.amp = as_bool(amp)
        on_cuda = self.device.type == "cuda"
        if channels_last is None or (isinstance(channels_last, str) and channels_last.strip().lower() == "auto"):
            self.channels_last = self.amp and self.device.type == "cpu"
        else:
            self.channels_last = as_bool(channels_last)
        self.compile = as_bool(compile)
        self.engine_amp = self.amp and on_cuda
        self.inferer_amp = self.amp and not on_cuda

    def inferer(self, inferer=None):
        """``inferer`` (default MONAI's ``SimpleInferer``) wrapped in an
        :class:`~transfuse_monai.inferers.AutocastInferer` set up for these switches."""
        from monai.inferers import SimpleInferer

        from transfuse_monai.inferers import AutocastInferer

        return AutocastInferer(
            SimpleInferer() if inferer is None else inferer, enabled=self.inferer_amp, channels_last=self.channels_last
        )

    def place(self, network: nn.Module) -> nn.Module:
        """Move ``network`` to the device, channels-last when asked (see :func:`place_network`)."""
        return place_network(network, self.device, self.channels_last)

    def __repr__(self) -> str:
        return (
            f"FastPaths(device={str(self.device)!r}, amp={self.amp}, channels_last={self.channels_last}, "
            f"compile={self.compile})"
        )
