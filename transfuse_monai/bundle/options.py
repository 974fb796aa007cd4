# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Run options of the bundles, parsed once: booleans from the command line and the fast-path switches.

``amp`` may also be ``"auto"``: the fastest precision the hardware runs correctly (:func:`choose_precision`): on
CUDA autocast (bfloat16 where the device computes it natively, else float16 with the engine's gradient scaler), on a
CPU with native bfloat16 dot products (AMX, AVX512-BF16; see :mod:`transfuse_monai.utils.hardware`) bfloat16 autocast
with channels-last tensors, and float32 on other CPUs, where bfloat16 is emulated and several times slower. The log
says which path was chosen and why.

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

import logging
import os
from typing import NamedTuple

import torch
import torch.nn as nn

__all__ = ["as_bool", "FastPaths", "Precision", "choose_precision", "place_network", "default_num_workers"]

logger = logging.getLogger(__name__)

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


class Precision(NamedTuple):
    """The precision :func:`choose_precision` chose: autocast on or off, its dtype, why, and whether the hardware
    chose it (``amp="auto"``) rather than the caller."""

    amp: bool
    dtype: torch.dtype | None
    reason: str
    auto: bool = False


def choose_precision(device: str | torch.device, amp: bool | str = "auto") -> Precision:
    """The compute precision for ``device``: ``amp`` as given when it is a boolean, else (``"auto"``) the fastest
    precision the hardware runs natively.

    ``"auto"``: CUDA autocasts in bfloat16 where the device supports it and in float16 elsewhere; a CPU autocasts in
    bfloat16 when it has native bfloat16 dot products (AMX or AVX512-BF16, honouring ``ONEDNN_MAX_CPU_ISA`` and
    ``ATEN_CPU_CAPABILITY``) and stays in float32 otherwise; other devices stay in float32.

    Raises:
        ValueError: ``amp`` is neither a boolean spelling nor ``"auto"``.
    """
    device = torch.device(device)
    try:
        explicit = None if isinstance(amp, str) and amp.strip().lower() == "auto" else as_bool(amp)
    except ValueError:
        raise ValueError(f"amp must be true, false or auto, got {amp!r}.") from None
    default_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if explicit is not None:
        return Precision(explicit, default_dtype if explicit else None, f"amp={str(explicit).lower()} given")
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] >= 8:  # Ampere and later (as the hardware probe reports)
            return Precision(True, torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} computes bfloat16",
                             True)
        return Precision(True, torch.float16, f"auto: {torch.cuda.get_device_name(device)} has no bfloat16, float16",
                         True)
    if device.type != "cpu":
        return Precision(False, None, f"auto: no mixed precision path on '{device.type}'", True)
    from transfuse_monai.utils.hardware import probe

    info = probe()
    if info.cpu_bf16:
        return Precision(True, torch.bfloat16, f"auto: native bfloat16 on this CPU ({info.cpu_kind})", True)
    return Precision(False, None, f"auto: no native bfloat16 on this CPU ({info.cpu_kind}, kernels "
                                  f"{info.torch_capability}); emulated bfloat16 is slower than float32", True)


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
        amp: mixed precision: ``True``, ``False`` or ``"auto"`` (:func:`choose_precision`). On CUDA MONAI's engine
            AMP (autocast, with a ``GradScaler`` in training; ``engine_amp_kwargs`` gives its dtype); elsewhere
            bfloat16 autocast through :class:`~transfuse_monai.inferers.AutocastInferer` (MONAI's engines autocast
            only on CUDA).
        channels_last: NHWC weights and inputs; ``"auto"`` or ``None`` turns it on with ``amp`` on a CPU (where it
            pays off) and leaves it off otherwise.
        compile: ``torch.compile`` the network through the MONAI engines' ``compile`` option.

    Attributes:
        amp, channels_last, compile: the parsed switches (``amp`` resolved).
        precision: the :class:`Precision` chosen, with its reason (logged).
        engine_amp: the ``amp`` argument of MONAI's engines (CUDA only).
        engine_amp_kwargs: their ``amp_kwargs`` (the autocast dtype).
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
        self.precision = choose_precision(self.device, amp)
        self.amp = self.precision.amp
        on_cuda = self.device.type == "cuda"
        if channels_last is None or (isinstance(channels_last, str) and channels_last.strip().lower() == "auto"):
            self.channels_last = self.amp and self.device.type == "cpu"
        else:
            self.channels_last = as_bool(channels_last)
        self.compile = as_bool(compile)
        self.engine_amp = self.amp and on_cuda
        self.engine_amp_kwargs = {"dtype": self.precision.dtype} if self.engine_amp else {}
        self.inferer_amp = self.amp and not on_cuda
        dtype = str(self.precision.dtype).replace("torch.", "") if self.amp else "float32"
        layout = ", channels-last" if self.channels_last else ""
        logger.info("Precision on %s: %s%s (%s).", self.device, dtype, layout, self.precision.reason)

    def inferer(self, inferer=None):
        """``inferer`` (default MONAI's ``SimpleInferer``) wrapped in an
        :class:`~transfuse_monai.inferers.AutocastInferer` set up for these switches."""
        from monai.inferers import SimpleInferer

        from transfuse_monai.inferers import AutocastInferer

        return AutocastInferer(
            SimpleInferer() if inferer is None else inferer, enabled=self.inferer_amp,
            dtype=self.precision.dtype if self.inferer_amp else None, channels_last=self.channels_last,
        )

    def place(self, network: nn.Module) -> nn.Module:
        """Move ``network`` to the device, channels-last when asked (see :func:`place_network`)."""
        return place_network(network, self.device, self.channels_last)

    def __repr__(self) -> str:
        return (
            f"FastPaths(device={str(self.device)!r}, amp={self.amp}, channels_last={self.channels_last}, "
            f"compile={self.compile})"
        )
