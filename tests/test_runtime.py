# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The inference runtime of the bundles (``backend``): ``auto`` runs the fastest usable export beside the checkpoint
for the hardware, never a stale one, and PyTorch when the caller fixed the precision; explicit backends fail early
with the file or package named."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transfuse_monai.bundle import InferenceRuntime, Precision, choose_backend
from transfuse_monai.bundle import runtime
from transfuse_monai.bundle.runtime import AUTO_ORDER, EXPORT_FILES


def paths(native_bf16: bool, auto: bool = True, device: str = "cpu") -> SimpleNamespace:
    """What choose_backend reads of a FastPaths: the device and the precision chosen (``auto`` or given)."""
    amp = native_bf16 if auto else False
    reason = "auto: test" if auto else "amp=false given"
    return SimpleNamespace(device=torch.device(device), amp=amp,
                           precision=Precision(amp, torch.bfloat16 if amp else None, reason, auto))


def models(tmp_path: Path, *exports: str, age: float = 0.0) -> Path:
    """A models folder with model.pt and ``exports`` written ``age`` seconds after it (negative: before)."""
    folder = tmp_path / "models"
    folder.mkdir()
    ckpt = folder / "model.pt"
    ckpt.write_bytes(b"weights")
    t = ckpt.stat().st_mtime
    for name in exports:
        (folder / name).write_bytes(b"export")
        os.utime(folder / name, (t + age, t + age))
    return ckpt


def test_auto_takes_only_exports_that_met_parity():
    assert set(AUTO_ORDER) == {"amx", "bf16", "other"}
    assert all(set(order) <= set(EXPORT_FILES) for order in AUTO_ORDER.values())
    # NNCF int8 (accuracy-controlled only): measured faster than the bf16 IR only on native-bf16 CPUs without AMX
    assert [k for k, order in AUTO_ORDER.items() if "model_int8.xml" in order] == ["bf16"]


def test_cpu_class_follows_the_probe(monkeypatch):
    from transfuse_monai.utils import hardware

    assert runtime.cpu_class(False) == "other"
    for amx, expected in ((True, "amx"), (False, "bf16")):
        monkeypatch.setattr(hardware, "probe", lambda amx=amx: SimpleNamespace(cpu_amx=amx))
        assert runtime.cpu_class(True) == expected


def test_auto_without_exports_is_pytorch(tmp_path):
    backend = choose_backend(paths(True), models(tmp_path))
    assert backend.name == "pytorch" and backend.model_path is None and "no usable export" in backend.reason


def test_auto_prefers_openvino_on_native_bf16_and_int8_elsewhere(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    ckpt = models(tmp_path, "model.xml", "model_int8.onnx", "model.onnx", "model_int8.xml", age=5)
    monkeypatch.setattr(runtime, "cpu_class", lambda native_bf16: "amx" if native_bf16 else "other")
    bf16 = choose_backend(paths(True), ckpt)
    assert (bf16.name, bf16.model_path.name) == ("openvino", "model.xml") and "AMX" in bf16.reason
    no_bf16 = choose_backend(paths(False), ckpt)
    assert (no_bf16.name, no_bf16.model_path.name) == ("onnxruntime", "model_int8.onnx")
    os.remove(ckpt.parent / "model_int8.onnx")
    assert choose_backend(paths(False), ckpt).model_path.name == "model.xml"


def test_auto_takes_the_int8_ir_without_amx_only_when_accuracy_controlled(tmp_path, monkeypatch, caplog):
    pytest.importorskip("openvino")
    import transfuse_monai.export as export

    ckpt = models(tmp_path, "model.xml", "model_int8.xml", age=5)
    monkeypatch.setattr(runtime, "cpu_class", lambda native_bf16: "bf16")
    bounds = {"model_int8.xml": None}
    monkeypatch.setattr(export, "accuracy_controlled", lambda path: bounds[Path(path).name])
    with caplog.at_level(logging.INFO, logger="transfuse_monai.bundle.runtime"):
        plain = choose_backend(paths(True), ckpt)
    assert plain.model_path.name == "model.xml" and "without accuracy control: not used" in caplog.text
    bounds["model_int8.xml"] = 0.005
    controlled = choose_backend(paths(True), ckpt)
    assert (controlled.name, controlled.model_path.name) == ("openvino", "model_int8.xml")
    assert "native bfloat16 without AMX" in controlled.reason


def test_auto_ignores_exports_older_than_the_checkpoint(tmp_path, caplog):
    pytest.importorskip("openvino")
    ckpt = models(tmp_path, "model.xml", age=-60)
    with caplog.at_level(logging.WARNING, logger="transfuse_monai.bundle.runtime"):
        backend = choose_backend(paths(True), ckpt)
    assert backend.name == "pytorch"
    assert "model.xml is older than model.pt" in caplog.text


def test_a_given_precision_or_a_gpu_keeps_pytorch(tmp_path):
    ckpt = models(tmp_path, "model.xml", "model_int8.onnx", age=5)
    given = choose_backend(paths(False, auto=False), ckpt)
    assert given.name == "pytorch" and "amp=false given" in given.reason
    assert choose_backend(paths(True, device="cuda"), ckpt).name == "pytorch"


def test_explicit_backends(tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = models(tmp_path, "model.onnx", age=5)
    assert choose_backend(paths(True), ckpt, "pytorch").name == "pytorch"
    chosen = choose_backend(paths(True), ckpt, "onnxruntime")
    assert chosen.model_path == ckpt.parent / "model.onnx" and "given" in chosen.reason
    assert choose_backend(paths(True), ckpt, "ONNXRuntime", ckpt.parent / "model.onnx").name == "onnxruntime"
    with pytest.raises(FileNotFoundError, match=r"elsewhere\.onnx not found"):
        choose_backend(paths(True), ckpt, "onnxruntime", tmp_path / "elsewhere.onnx")
    with pytest.raises(ValueError, match="backend must be one of auto, pytorch, onnxruntime, openvino"):
        choose_backend(paths(True), ckpt, "tensorrt")


def test_explicit_backend_without_its_export_names_the_folder(tmp_path):
    pytest.importorskip("openvino")
    ckpt = models(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"none of model\.xml, model_int8\.xml in .*models"):
        choose_backend(paths(True), ckpt, "openvino")


def test_runtime_runs_an_export_without_autocast(tmp_path):
    """An exported runtime has no weights to load and its inferer does not autocast (the runtime picks its own
    precision); PyTorch keeps the FastPaths inferer and placement."""
    from monai.inferers import SimpleInferer

    from transfuse_monai.bundle import FastPaths
    from transfuse_monai.export import export_onnx_model
    from transfuse_monai.inferers import AutocastInferer, OnnxRuntimeNetwork

    net = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
    ckpt = models(tmp_path)
    export_onnx_model(net, ckpt.parent / "model.onnx", (3, 16, 16))
    fast = FastPaths("cpu", True)
    runtime = InferenceRuntime(fast, ckpt, "onnxruntime", num_threads=1)
    assert runtime.exported and isinstance(runtime.network(net), OnnxRuntimeNetwork)
    assert type(runtime.inferer()) is SimpleInferer
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(runtime.network(net)(x), net(x), atol=1e-4, rtol=1e-4)
    eager = InferenceRuntime(fast, ckpt, "pytorch")
    assert not eager.exported and isinstance(eager.inferer(), AutocastInferer)
    assert eager.network(net) is net
