# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""An exported ONNX model (fp32 or int8) run by ONNX Runtime behind the ``nn.Module`` interface of a network, so
that MONAI's inferers and engines (``SupervisedEvaluator``) run it unchanged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["OnnxRuntimeNetwork", "ort_session"]


def ort_session(
    model_path: str | os.PathLike,
    providers: Sequence[str] | None = None,
    intra_op_num_threads: int | None = None,
    spinning: bool = True,
):
    """An ONNX Runtime session with every graph optimisation on (``ORT_ENABLE_ALL``) and one inter-op thread.

    Args:
        model_path: the ``.onnx`` file.
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        intra_op_num_threads: threads of one operator, default ``torch.get_num_threads()`` (the threads PyTorch
            would use; ONNX Runtime's own default is one per physical core).
        spinning: whether idle intra-op threads spin after each run (ONNX Runtime's default: faster back-to-back
            runs, but it takes the cores from whatever runs next in the process).

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
    """
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found; export it with python -m transfuse_monai.export.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_num_threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxRuntimeNetwork(torch.nn.Module):
    """Run an ONNX model with ONNX Runtime as a network: ``forward(x)`` feeds ``x`` to the graph's input and returns
    its first output as a float tensor on ``x``'s device.

    It has no parameters: ``.to()``, ``.eval()`` and ``.train()`` change nothing, and there are no weights to load
    (the bundles' ``inference_onnx.json`` disables their ``CheckpointLoader``). The input is copied to a contiguous
    float32 array on the CPU, so channels-last or reduced-precision inputs are accepted.

    Args:
        model_path: the ``.onnx`` file, e.g. ``models/model_int8.onnx`` written by
            ``python -m transfuse_monai.export <bundle> --formats onnx-int8``.
        providers: ONNX Runtime execution providers, default ``["CPUExecutionProvider"]``.
        intra_op_num_threads: see :func:`ort_session`.
        spinning: see :func:`ort_session`.

    Example::

        net = OnnxRuntimeNetwork("bundles/polyp/models/model_int8.onnx")
        logits = SimpleInferer()(image, net)
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        super().__init__()
        self.model_path = str(model_path)
        self.session = ort_session(model_path, providers, intra_op_num_threads, spinning)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_path} has {len(inputs)} inputs; OnnxRuntimeNetwork runs one-input graphs.")
        self.input_name = inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"model_path={self.model_path!r}, providers={self.session.get_providers()}"
