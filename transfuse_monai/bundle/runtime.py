# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The runtime that runs a bundle's network for inference: PyTorch, or an export beside the checkpoint run by ONNX
Runtime or OpenVINO, chosen once per run (``backend``, default ``"auto"``).

``"auto"`` takes the fastest runtime the hardware and the bundle's ``models`` folder allow, in the order measured
on CPUs (``benchmarks/RESULTS.md``):

* on a CPU with AMX: the OpenVINO IR ``model.xml`` (OpenVINO compiles it in bfloat16 there: 0.21x of fp32 eager,
  against 0.40x for PyTorch's bfloat16 autocast and 0.24x for NNCF int8), else PyTorch in the precision of ``amp``
  (bfloat16 autocast with channels-last);
* on a CPU with native bfloat16 but no AMX (AVX512-BF16, with VNNI's int8 dot products): the accuracy-controlled
  int8 IR ``model_int8.xml`` (``--formats openvino-int8 --accuracy_count N``; about 0.6x of the bfloat16 IR's time
  with the parity goal met), then ``model.xml`` (0.40x of fp32 eager), else PyTorch as above;
* on other CPUs: the int8 ONNX export ``model_int8.onnx`` (0.49x of fp32 eager on an AVX2 host), then ``model.xml``
  (0.69x), then ``model.onnx`` (0.68x), else PyTorch in float32;
* on a GPU: PyTorch (autocast per ``amp``).

An export is taken only when it is at least as new as ``model.pt`` (an export older than the checkpoint was made
from other weights, and is skipped with a warning), its runtime is installed, and ``amp`` is ``"auto"``: an explicit
``amp`` (``--amp false`` for float32 reference runs) keeps PyTorch. ``backend`` ``"pytorch"``, ``"onnxruntime"``
or ``"openvino"`` forces one (the latter two run ``model_path``, else the first of their files found:
``model_int8.onnx`` then ``model.onnx``; ``model.xml`` then ``model_int8.xml``); the layers ``inference_onnx.json``
and ``inference_openvino.json`` do that, through ``runtime_options``. Only exports whose masks met the parity goal
on real images are taken by ``"auto"``: an NNCF int8 IR only when it was quantised with accuracy control (the bound
is recorded in the IR: :func:`transfuse_monai.export.accuracy_controlled`), never a plainly quantised one. The log
says which runtime and file were chosen and why. OpenVINO runs in throughput mode by default (``performance_hint``):
the images of a batch go to parallel streams, and the bundle's ``DataLoader`` takes :attr:`InferenceRuntime.batch_size`
images at a time to feed them (1.11x the images per second of latency mode in the polyp bundle's folder inference
with the int8 IR on 2 cores). In a bundle's
``inference.json``::

    "backend": "auto",
    "runtime_options": {},
    "runtime": "$transfuse_monai.bundle.InferenceRuntime(@fast_paths, @ckpt_path, @backend, **@runtime_options)",
    "network": "$@runtime.network(@network_init)",
    "dataloader": {"_target_": "DataLoader", ..., "batch_size": "$@runtime.batch_size"},
    "handlers": [{"_target_": "CheckpointLoader", ..., "_disabled_": "$bool(@init_ckpt) or @runtime.exported"}, ...]
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch.nn as nn

from transfuse_monai.bundle.options import FastPaths

__all__ = ["BACKENDS", "EXPORT_FILES", "AUTO_ORDER", "Backend", "choose_backend", "cpu_class", "InferenceRuntime"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pytorch", "onnxruntime", "openvino")
#: the exports a bundle's ``models`` folder may hold (the names ``python -m transfuse_monai.export`` writes), with
#: the runtime and the Python module each needs, in the order an explicit ``backend`` looks for its own
EXPORT_FILES = {
    "model_int8.onnx": ("onnxruntime", "onnxruntime"),
    "model.xml": ("openvino", "openvino"),
    "model.onnx": ("onnxruntime", "onnxruntime"),
    "model_int8.xml": ("openvino", "openvino"),
}
#: the order ``"auto"`` tries the exports in, by the CPU's class (:func:`cpu_class`), fastest first as measured
#: (``benchmarks/RESULTS.md``): only exports whose masks met the parity goal on the polyp test images; the NNCF int8 IR
#: (``model_int8.xml``) only when accuracy-controlled (plainly quantised it missed the goal). On CPUs without native
#: bfloat16 OpenVINO's int8 kernels were not measured, so it is not taken there.
AUTO_ORDER = {
    "amx": ("model.xml",),
    "bf16": ("model_int8.xml", "model.xml"),
    "other": ("model_int8.onnx", "model.xml", "model.onnx"),
}


def cpu_class(native_bf16: bool) -> str:
    """The key of :data:`AUTO_ORDER` for this CPU: ``"amx"``, ``"bf16"`` (native bfloat16 without AMX) or
    ``"other"``; ``native_bf16`` is what the ``auto`` precision decided (it honours the kernel limits)."""
    if not native_bf16:
        return "other"
    from transfuse_monai.utils.hardware import probe

    return "amx" if probe().cpu_amx else "bf16"


class Backend(NamedTuple):
    """What :func:`choose_backend` chose: the runtime, the export it runs (``None`` for PyTorch) and why."""

    name: str
    model_path: Path | None
    reason: str


def choose_backend(fast_paths: FastPaths, ckpt_path: str | os.PathLike, backend: str = "auto",
                   model_path: str | os.PathLike | None = None) -> Backend:
    """The runtime of a bundle's inference network (see the module's description).

    Args:
        fast_paths: the run's precision switches (device, ``amp`` as given, and whether it was ``"auto"``).
        ckpt_path: the checkpoint (``models/model.pt``); the exports are looked for beside it.
        backend: ``"auto"``, ``"pytorch"``, ``"onnxruntime"`` or ``"openvino"``.
        model_path: with ``"onnxruntime"`` or ``"openvino"``: the export to run, instead of the first found beside
            the checkpoint.

    Raises:
        ValueError: an unknown ``backend``.
        FileNotFoundError: ``backend`` names a runtime none of whose exports is beside the checkpoint.
        ModuleNotFoundError: ``backend`` names a runtime that is not installed.
    """
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if backend == "pytorch":
        return Backend("pytorch", None, "backend=pytorch given")
    ckpt = Path(ckpt_path)
    folder = ckpt.parent
    if backend != "auto":
        if importlib.util.find_spec(backend) is None:
            extra = " (pip install 'transfuse-monai[openvino]')" if backend == "openvino" else ""
            raise ModuleNotFoundError(f"backend={backend}: {backend} is not installed{extra}.")
        if model_path is not None:
            if not Path(model_path).is_file():
                raise FileNotFoundError(f"backend={backend}: {model_path} not found; export it with python -m "
                                        "transfuse_monai.export <bundle> --formats ...")
            return Backend(backend, Path(model_path), f"backend={backend} given")
        files = [f for f, (runtime, _) in EXPORT_FILES.items() if runtime == backend]
        found = [folder / f for f in files if (folder / f).is_file()]
        if not found:
            raise FileNotFoundError(f"backend={backend}: none of {', '.join(files)} in {folder}; export one with "
                                    "python -m transfuse_monai.export <bundle> --formats ...")
        return Backend(backend, found[0], f"backend={backend} given, the first of {', '.join(files)} found")
    device = fast_paths.device
    if device.type != "cpu":
        return Backend("pytorch", None, f"auto: PyTorch on {device.type}")
    if not fast_paths.precision.auto:
        return Backend("pytorch", None, f"auto: PyTorch, as {fast_paths.precision.reason}")
    native_bf16 = fast_paths.amp  # "auto" precision turned autocast on: the CPU computes bfloat16 natively
    kind = cpu_class(native_bf16)
    ckpt_time = ckpt.stat().st_mtime if ckpt.is_file() else None
    for name in AUTO_ORDER[kind]:
        path = folder / name
        if not path.is_file():
            continue
        runtime, module = EXPORT_FILES[name]
        if ckpt_time is not None and path.stat().st_mtime < ckpt_time:
            logger.warning("%s is older than %s (exported from other weights?): not used; export again with "
                           "python -m transfuse_monai.export.", path, ckpt.name)
            continue
        if importlib.util.find_spec(module) is None:
            logger.info("%s found, but %s is not installed: not used.", path.name, module)
            continue
        if name == "model_int8.xml":
            from transfuse_monai.export import accuracy_controlled

            if accuracy_controlled(path) is None:
                logger.info("%s was quantised without accuracy control: not used (export it with --formats "
                            "openvino-int8 --accuracy_count 64).", path.name)
                continue
        hardware = {"amx": "AMX", "bf16": "native bfloat16 without AMX", "other": "no native bfloat16"}[kind]
        return Backend(runtime, path, f"auto: {name} beside the checkpoint, the fastest runtime measured on CPUs "
                                      f"with {hardware}")
    return Backend("pytorch", None, "auto: PyTorch (no usable export beside the checkpoint)")


class InferenceRuntime:
    """The runtime of a bundle's inference, chosen once (:func:`choose_backend`) and logged.

    Args:
        fast_paths: the run's :class:`~transfuse_monai.bundle.FastPaths` (PyTorch's precision and placement).
        ckpt_path: the checkpoint; the exports are looked for beside it.
        backend: ``"auto"`` (default), ``"pytorch"``, ``"onnxruntime"`` or ``"openvino"``.
        model_path: the export to run with an explicit ``backend`` (default: found beside the checkpoint).
        num_threads: threads of ONNX Runtime / OpenVINO (default: PyTorch's).
        precision: OpenVINO's inference precision hint (``"f32"``, ``"bf16"``); default the device's.
        performance_hint: OpenVINO's performance hint: ``"auto"`` (default) is ``"throughput"``, which runs the
            images of a batch in parallel streams (a bundle's inference writes a folder of images: images per second
            count), ``"latency"`` runs one image at a time on all the threads
            (:class:`~transfuse_monai.inferers.OpenVINONetwork`).

    Attributes:
        backend: the :class:`Backend` chosen.
        exported: whether an export runs (then there are no weights to load: the bundle's ``CheckpointLoader`` is
            disabled).
    """

    def __init__(self, fast_paths: FastPaths, ckpt_path: str | os.PathLike, backend: str = "auto",
                 model_path: str | os.PathLike | None = None, num_threads: int | None = None,
                 precision: str | None = None, performance_hint: str = "auto") -> None:
        from transfuse_monai.inferers.openvino import PERFORMANCE_HINTS

        hint = str(performance_hint).strip().lower()
        if hint not in ("auto", *PERFORMANCE_HINTS):
            raise ValueError(f"performance_hint must be one of auto, {', '.join(PERFORMANCE_HINTS)}, got "
                             f"{performance_hint!r}.")
        self.fast_paths = fast_paths
        self.backend = choose_backend(fast_paths, ckpt_path, backend, model_path)
        self.exported = self.backend.name != "pytorch"
        self.num_threads = num_threads
        self.precision = precision
        self.performance_hint = "throughput" if hint == "auto" else hint
        self._exported_network: nn.Module | None = None
        where = f" {self.backend.model_path}" if self.backend.model_path else ""
        logger.info("Inference runtime: %s%s (%s).", self.backend.name, where, self.backend.reason)

    def _export_network(self) -> nn.Module:
        """The export run by its runtime, built once (compiling an OpenVINO IR takes seconds)."""
        if self._exported_network is None:
            if self.backend.name == "onnxruntime":
                from transfuse_monai.inferers import OnnxRuntimeNetwork

                self._exported_network = OnnxRuntimeNetwork(self.backend.model_path,
                                                            intra_op_num_threads=self.num_threads)
            else:
                from transfuse_monai.inferers import OpenVINONetwork

                self._exported_network = OpenVINONetwork(self.backend.model_path, precision=self.precision,
                                                         num_threads=self.num_threads,
                                                         performance_hint=self.performance_hint)
        return self._exported_network

    def network(self, network: nn.Module) -> nn.Module:
        """``network`` placed for PyTorch (:meth:`FastPaths.place`), or the export run by its runtime."""
        if self.exported:
            return self._export_network()
        return self.fast_paths.place(network)

    @property
    def batch_size(self) -> int:
        """The batch size of the bundle's inference ``DataLoader`` that keeps the runtime busy: the images OpenVINO
        runs in parallel in throughput mode (2 on 2 cores), else 1."""
        if self.backend.name == "openvino":
            return int(getattr(self._export_network(), "parallel_requests", 1))
        return 1

    def inferer(self, inferer=None):
        """:meth:`FastPaths.inferer` for PyTorch; for an export the inferer without autocast or channels-last (the
        runtime computes in its own precision)."""
        if not self.exported:
            return self.fast_paths.inferer(inferer)
        from monai.inferers import SimpleInferer

        return SimpleInferer() if inferer is None else inferer

    def __repr__(self) -> str:
        return f"InferenceRuntime(backend={self.backend.name!r}, model_path={str(self.backend.model_path)!r})"
