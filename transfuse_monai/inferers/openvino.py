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

__all__ = ["OpenVINONetwork", "precision_name"]

logger = logging.getLogger(__name__)


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
        precision: the inference precision hint (``"f32"``, ``"bf16"``, ``"f16"``); ``None`` keeps the device's
            default.
        num_threads: inference threads; ``None`` uses ``torch.get_num_threads()`` (the threads PyTorch would use).

    Raises:
        FileNotFoundError: ``model_path`` or its ``.bin`` does not exist.
        ModuleNotFoundError: OpenVINO is not installed (``pip install transfuse-monai[openvino]``).

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
    ) -> None:
        super().__init__()
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
        config: dict[str, object] = {}
        if device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(num_threads or torch.get_num_threads())
        if precision:
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        self.model_path = str(path)
        self.device_name = device
        self.compiled = ov.Core().compile_model(str(path), device, config)
        if len(self.compiled.inputs) != 1:
            raise ValueError(f"{path} has {len(self.compiled.inputs)} inputs; OpenVINONetwork runs one-input models.")
        self.output = self.compiled.output(0)
        self.precision = precision_name(self.compiled)
        logger.info("OpenVINO model %s compiled for %s, inference precision %s%s.", path.name, device, self.precision,
                    " (the device's default)" if not precision else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self.compiled(array)[self.output]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"model_path={self.model_path!r}, device={self.device_name!r}, precision={self.precision!r}"
