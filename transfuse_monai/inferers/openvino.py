# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""An exported OpenVINO IR model run by the OpenVINO runtime behind the ``nn.Module`` interface of a network, so
that MONAI's inferers and engines (``SupervisedEvaluator``) run it unchanged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["OpenVINONetwork", "PERFORMANCE_HINTS", "precision_name"]

logger = logging.getLogger(__name__)

#: OpenVINO's performance hints, as :class:`OpenVINONetwork` takes them
PERFORMANCE_HINTS = ("latency", "throughput")


def precision_name(compiled) -> str:
    """The inference precision of an OpenVINO compiled model, as OpenVINO names element types (``"f32"``,
    ``"bf16"``, ``"f16"``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OpenVINONetwork(torch.nn.Module):
    """Run an OpenVINO IR (``model.xml`` + ``model.bin``) as a network: ``forward(x)`` feeds ``x`` to the model's
    input and returns its first output as a float tensor on ``x``'s device.

    OpenVINO compiles the model for the device once, at construction. Its CPU plugin picks the inference precision
    from the hardware (bfloat16 on CPUs with AMX or AVX512-BF16, float32 elsewhere) unless ``precision`` says
    otherwise; the log names the precision compiled. Like
    :class:`~transfuse_monai.inferers.OnnxRuntimeNetwork` it has no parameters: ``.to()``, ``.eval()`` and
    ``.train()`` change nothing, and the bundles' ``inference_openvino.json`` disables their ``CheckpointLoader``.

    Args:
        model_path: the ``.xml`` file written by ``python -m transfuse_monai.export <bundle> --formats openvino``, or
            an ONNX model, which OpenVINO reads directly (an int8 QDQ model then runs on OpenVINO's int8 kernels).
        device: the OpenVINO device (``"CPU"``, ``"GPU"``, ``"AUTO"``).
        precision: the inference precision hint (``"f32"``, ``"bf16"``, ``"f16"``); ``None``: the precision the IR
            records (an accuracy-controlled int8 IR records float32, in which its accuracy was measured:
            :data:`transfuse_monai.export.INFERENCE_PRECISION_RT_INFO`), else the device's default.
        num_threads: inference threads; ``None`` uses ``torch.get_num_threads()`` (the threads PyTorch would use).
        performance_hint: ``"latency"`` (default): one inference at a time on all the threads, the fastest for one
            image; ``"throughput"``: OpenVINO splits the threads into streams (two streams of one thread on two
            cores) and ``forward`` runs the images of a batch in parallel, one inference request each
            (:attr:`parallel_requests` of them): more images per second for batches of at least
            :attr:`parallel_requests` (on 2 cores at 352x352: the int8 IR alone 1.4x the images/s of latency mode,
            the polyp bundle's folder inference 1.11x with the int8 IR and 1.07x with the bfloat16 one), but one
            image alone gets one stream's threads.

    Attributes:
        parallel_requests: the inference requests run at once: 1 in latency mode, OpenVINO's optimal number in
            throughput mode (the batch size that keeps every stream busy).
        precision: the inference precision compiled (``"f32"``, ``"bf16"``).

    Raises:
        FileNotFoundError: ``model_path`` or its ``.bin`` does not exist.
        ModuleNotFoundError: OpenVINO is not installed (``pip install transfuse-monai[openvino]``).
        ValueError: an unknown ``performance_hint``, or a model with more than one input.

    Example::

        net = OpenVINONetwork("bundles/polyp/models/model.xml")
        logits = SimpleInferer()(image, net)
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "CPU",
        precision: str | None = None,
        num_threads: int | None = None,
        performance_hint: str = "latency",
    ) -> None:
        super().__init__()
        hint = str(performance_hint).strip().lower()
        if hint not in PERFORMANCE_HINTS:
            raise ValueError(f"performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, "
                             f"got {performance_hint!r}.")
        try:
            import openvino as ov
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "OpenVINO is not installed: pip install 'transfuse-monai[openvino]' (or pip install openvino)."
            ) from err
        path = Path(model_path)
        for needed in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"OpenVINO model file {needed} not found; export it with python -m transfuse_monai.export "
                    "<bundle> --formats openvino."
                )
        config: dict[str, object] = {"PERFORMANCE_HINT": hint.upper()}
        if device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(num_threads or torch.get_num_threads())
        core = ov.Core()
        model = core.read_model(str(path))
        source = "given" if precision else "the device's default"
        if not precision:
            from transfuse_monai.export import INFERENCE_PRECISION_RT_INFO

            if model.has_rt_info(list(INFERENCE_PRECISION_RT_INFO)):
                precision = model.get_rt_info(list(INFERENCE_PRECISION_RT_INFO)).astype(str)
                source = "recorded in the IR: its accuracy was measured in it"
        if precision:
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        self.model_path = str(path)
        self.device_name = device
        self.compiled = core.compile_model(model, device, config)
        if len(self.compiled.inputs) != 1:
            raise ValueError(f"{path} has {len(self.compiled.inputs)} inputs; OpenVINONetwork runs one-input models.")
        self.output = self.compiled.output(0)
        self.precision = precision_name(self.compiled)
        self.performance_hint = hint
        self.parallel_requests = 1
        self._queue = None
        if hint == "throughput":
            self.parallel_requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            if self.parallel_requests > 1:
                self._results: dict[int, np.ndarray] = {}
                self._queue = ov.AsyncInferQueue(self.compiled, self.parallel_requests)
                self._queue.set_callback(self._done)
        logger.info("OpenVINO model %s compiled for %s, inference precision %s (%s), %s mode%s.", path.name, device,
                    self.precision, source, hint,
                    f" ({self.parallel_requests} images in parallel)" if hint == "throughput" else "")

    def _done(self, request, index: int) -> None:
        self._results[index] = np.array(request.get_tensor(self.output).data, dtype=np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self._queue is None or len(array) == 1:
            out = np.asarray(self.compiled(array)[self.output], dtype=np.float32)
        else:
            self._results.clear()
            for i in range(len(array)):
                self._queue.start_async({0: array[i : i + 1]}, i)
            self._queue.wait_all()
            out = np.concatenate([self._results.pop(i) for i in range(len(array))])
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return (f"model_path={self.model_path!r}, device={self.device_name!r}, precision={self.precision!r}, "
                f"performance_hint={self.performance_hint!r}")
