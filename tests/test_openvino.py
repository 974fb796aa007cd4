# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The OpenVINO IR exports (float32 and NNCF int8) and ``inference_openvino.json``: verified before they are written,
nothing partial left behind, and the bundle's inference through OpenVINO writes the masks eager PyTorch writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import transfuse_monai.export as export
from transfuse_monai.export import INT8_FLOAT_MODULES, INT8_MIN_DICE, export_bundle, export_openvino_model
from transfuse_monai.tasks import get_task

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'transfuse-monai[openvino]')")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "polyp" / "configs"
TINY = [64, 64]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A random-weight polyp checkpoint at 64x64, a generated polyp dataset and the OpenVINO export."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("openvino")
    data = Path(get_task("polyp").make_sample(root / "data", n_train=8, test_sets={"Kvasir": 2}, size=(64, 64),
                                              test_sizes=[(60, 80)], seed=1))
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(REPO / "bundles" / "polyp"), "image_size": TINY})
    ckpt = root / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    results = export_bundle(REPO / "bundles" / "polyp", formats=["openvino"], ckpt=ckpt, output_dir=root / "models",
                            image_size=TINY)
    return {"root": root, "data": data, "ckpt": ckpt, "results": results}


@pytest.fixture(scope="module")
def int8_exported(exported, tmp_path_factory) -> dict:
    """The NNCF int8 export of the same checkpoint, calibrated on 4 of the generated training images."""
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'transfuse-monai[openvino]')")
    out = tmp_path_factory.mktemp("openvino_int8")
    results = export_bundle(REPO / "bundles" / "polyp", formats=["openvino-int8"], ckpt=exported["ckpt"],
                            output_dir=out, calib_dir=exported["data"], calib_count=4, image_size=TINY)
    return {"out": out, "info": results["openvino-int8"]}


def test_export_writes_a_verified_ir(exported):
    info = exported["results"]["openvino"]
    assert set(exported["results"]) == {"openvino"}
    assert info["file"].endswith("model.xml") and info["max_abs_error"] < 1e-4
    assert 0.9 <= info["default_mask_dice"] <= 1.0 and info["default_precision"] in ("f32", "bf16", "f16")
    names = sorted(p.name for p in (exported["root"] / "models").iterdir())
    assert names == ["model.bin", "model.pt", "model.xml"], "no temporary folder or partial file is left"
    compiled = ov.Core().compile_model(info["file"], "CPU")
    assert compiled.inputs[0].get_partial_shape().to_string() == "[?,3,64,64]", "the batch axis is dynamic"


def test_a_failed_verification_writes_nothing(tmp_path):
    class Noisy(torch.nn.Module):  # random output: no export of it can match eager
        def forward(self, x):
            return x + torch.rand_like(x)

    with pytest.raises(RuntimeError, match="OpenVINO .f32. output differs from eager PyTorch"):
        export_openvino_model(Noisy(), tmp_path / "out" / "model.xml", (1, 8, 8))
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match="written as '<name>.xml'"):
        export_openvino_model(Noisy(), tmp_path / "model.onnx", (1, 8, 8))


def test_inference_openvino_config_matches_pytorch_inference(exported, tmp_path):
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    images = exported["data"] / "TestDataset" / "Kvasir" / "images"
    common = dict(meta_file=str(CONFIGS / "metadata.json"), workflow_type="infer", input_dir=str(images),
                  image_size=TINY, num_workers=0, ckpt_dir=str(exported["root"] / "models"), amp=False)
    runs = (("torch", [CONFIGS / "inference.json"], {}),
            ("openvino", [CONFIGS / "inference.json", CONFIGS / "inference_openvino.json"],
             {"openvino_precision": "f32"}))
    for name, files, extra in runs:
        workflow = ConfigWorkflow(config_file=[str(f) for f in files], output_dir=str(tmp_path / name),
                                  **common, **extra)
        workflow.initialize()
        if name == "openvino":
            net = workflow.parser.get_parsed_content("network")
            assert type(net).__name__ == "OpenVINONetwork" and net.precision == "f32"
        workflow.run()
        workflow.finalize()
    for src in sorted(images.iterdir()):
        masks = [np.asarray(Image.open(tmp_path / name / f"{src.stem}.png")) for name in ("torch", "openvino")]
        with Image.open(src) as img:
            assert masks[0].shape == masks[1].shape == img.size[::-1]
        assert (masks[0] == masks[1]).mean() >= 0.999, f"{src.name}: OpenVINO f32 and PyTorch masks differ"


def test_inference_openvino_sets_only_the_runtime():
    """The layer names the runtime and its options; inference.json builds the network from them (and disables its
    CheckpointLoader for an export)."""
    layer = json.loads((CONFIGS / "inference_openvino.json").read_text())
    assert set(layer) == {"openvino_path", "openvino_precision", "openvino_threads", "openvino_performance_hint",
                          "backend", "runtime_options"}
    assert layer["backend"] == "openvino" and set(layer["runtime_options"]) == {"model_path", "num_threads",
                                                                               "precision", "performance_hint"}
    base = json.loads((CONFIGS / "inference.json").read_text())
    assert base["handlers"][0]["_target_"] == "CheckpointLoader"
    assert "@runtime.exported" in base["handlers"][0]["_disabled_"] and base["backend"] == "auto"


def test_auto_backend_runs_the_openvino_export_beside_the_checkpoint(exported, tmp_path):
    """inference.json as shipped (amp and backend auto) on a models folder holding model.pt and a newer model.xml
    runs the IR with OpenVINO and writes every mask; --amp false keeps PyTorch."""
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    images = exported["data"] / "TestDataset" / "Kvasir" / "images"
    runs = {}
    for name, extra in (("auto", {}), ("float32", {"amp": False})):
        workflow = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
                                  workflow_type="infer", input_dir=str(images), image_size=TINY, num_workers=0,
                                  ckpt_dir=str(exported["root"] / "models"), output_dir=str(tmp_path / name), **extra)
        workflow.initialize()
        runs[name] = (type(workflow.parser.get_parsed_content("network")).__name__,
                      workflow.parser.get_parsed_content("runtime").backend.reason)
        workflow.run()
        workflow.finalize()
    assert runs["auto"][0] == "OpenVINONetwork" and "model.xml beside the checkpoint" in runs["auto"][1]
    assert runs["float32"][0] == "TransFuse" and "amp=false given" in runs["float32"][1]
    for src in sorted(images.iterdir()):
        masks = [np.asarray(Image.open(tmp_path / name / f"{src.stem}.png")) > 0 for name in runs]
        assert masks[0].shape == masks[1].shape and (masks[0] == masks[1]).mean() >= 0.98, src.name


def test_missing_model_is_named(tmp_path):
    from transfuse_monai.inferers import OpenVINONetwork

    with pytest.raises(FileNotFoundError, match=r"model\.xml not found; export it"):
        OpenVINONetwork(tmp_path / "model.xml")


def _head_and_body_convolutions(model) -> tuple[list, list]:
    """The Convolution operations of the segmentation head (:func:`openvino_module_operations`) and the others."""
    head = set(export.openvino_module_operations(model, ["head_final"])["head_final"])
    convs = [op for op in model.get_ops() if op.get_type_name() == "Convolution"]
    return [c for c in convs if c.get_friendly_name() in head], [c for c in convs if c.get_friendly_name() not in head]


def test_openvino_int8_export_is_verified_and_quantised(int8_exported, exported):
    info, out = int8_exported["info"], int8_exported["out"]
    assert Path(info["file"]) == out / "model_int8.xml"
    assert sorted(p.name for p in out.iterdir()) == ["model_int8.bin", "model_int8.xml"], "no float32 or temp files"
    assert info["mean_dice"] >= INT8_MIN_DICE and 0 <= info["max_prob_diff"] < 1
    assert info["precision"] in ("f32", "bf16", "f16")
    assert (out / "model_int8.bin").stat().st_size < 0.5 * exported["ckpt"].stat().st_size  # int8 weights
    head, body = _head_and_body_convolutions(ov.Core().read_model(info["file"]))
    quantized = lambda op: op.input_value(0).get_node().get_type_name() == "FakeQuantize"  # noqa: E731
    assert len(head) == 2 and not any(map(quantized, head)), "the segmentation head stays floating point"
    assert len(body) > 40 and sum(map(quantized, body)) > 0.9 * len(body)


def test_accuracy_items_are_labelled_held_out_training_images(exported):
    items = export.accuracy_items(REPO / "bundles" / "polyp", exported["data"], count=3, skip=4, image_size=TINY)
    calib = export.calibration_images(REPO / "bundles" / "polyp", exported["data"], 4, image_size=TINY)
    assert len(items) == 3
    for image, label in items:
        assert image.shape == (1, 3, *TINY) and image.dtype == np.float32
        assert label.shape == tuple(TINY) and set(np.unique(label)) <= {0, 1} and label.any()
        assert not any(np.array_equal(image[0], c) for c in calib), "held out from the calibration images"
    with pytest.raises(ValueError, match="none left after the 8"):
        export.accuracy_items(REPO / "bundles" / "polyp", exported["data"], count=1, skip=8, image_size=TINY)


def test_label_dice_is_per_image_mean_over_foreground_classes():
    label = np.zeros((4, 4), np.int64)
    label[:2] = 1
    logits = np.full((1, 1, 4, 4), -1.0, np.float32)
    logits[0, 0, :1] = 1.0  # half the foreground found
    assert export.label_dice(logits, label) == pytest.approx(2 * 4 / (4 + 8))
    assert export.label_dice(np.full((1, 1, 4, 4), -1.0), np.zeros((4, 4), np.int64)) == 1.0  # both empty
    three = np.zeros((1, 3, 4, 4), np.float32)
    three[0, 1, :2] = 1.0  # class 1 right, class 2 absent from both
    assert export.label_dice(three, label) == 1.0
    three[0, 2, :2] = 2.0  # class 1 predicted as 2: both classes wrong
    assert export.label_dice(three, label) == 0.0


def test_accuracy_controlled_int8_export_is_marked_for_auto(exported, tmp_path):
    pytest.importorskip("nncf", reason="NNCF is not installed")
    info = export.export_openvino_int8(REPO / "bundles" / "polyp", tmp_path / "model_int8.xml", exported["ckpt"],
                                       calib_dir=exported["data"], calib_count=2, verify_count=2, min_dice=0.0,
                                       accuracy_count=3, max_drop=1.0, image_size=TINY)
    control = info["accuracy_control"]
    assert control["accuracy_images"] == 3 and control["max_drop"] == 1.0 and control["quantized"] > 40
    assert info["precision"] == "f32", "the export verifies the IR in the precision it records, as inference runs it"
    assert 0.0 <= control["drop"] <= 1.0
    assert export.accuracy_controlled(tmp_path / "model_int8.xml") == 1.0
    assert export.accuracy_controlled(exported["results"]["openvino"]["file"]) is None
    # run in the precision its accuracy was measured in (NNCF's: float32 around the int8 operations), unless told
    from transfuse_monai.inferers import OpenVINONetwork

    assert OpenVINONetwork(tmp_path / "model_int8.xml", num_threads=1).precision == "f32"
    default = ov.Core().compile_model(str(exported["results"]["openvino"]["file"]), "CPU")
    assert OpenVINONetwork(exported["results"]["openvino"]["file"], num_threads=1).precision == \
        default.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if default.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16":
        assert OpenVINONetwork(tmp_path / "model_int8.xml", precision="bf16", num_threads=1).precision == "bf16"
    with pytest.raises(ValueError, match="max_drop must be >= 0"):
        export.quantize_openvino_int8(exported["results"]["openvino"]["file"], tmp_path / "x.xml",
                                      np.zeros((1, 3, *TINY), np.float32), accuracy=[(None, None)], max_drop=-1)


def test_accuracy_control_that_ends_above_max_drop_writes_nothing(exported, tmp_path, monkeypatch):
    nncf = pytest.importorskip("nncf", reason="NNCF is not installed")
    xml = exported["results"]["openvino"]["file"]
    items = export.accuracy_items(REPO / "bundles" / "polyp", exported["data"], count=2, image_size=TINY)

    def inverted(model, *args, **kwargs):  # an "accuracy control" that returns a model with inverted masks
        logits = model.get_results()[0].input_value(0)
        return ov.Model([ov.opset13.negative(logits)], model.get_parameters())

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", inverted)
    with pytest.raises(RuntimeError, match=r"mean \|Dice change\| of 0\.\d+ on 2 images \(> max_drop=0\.01\)"):
        export.quantize_openvino_int8(xml, tmp_path / "int8.xml", np.zeros((1, 3, *TINY), np.float32),
                                      accuracy=items, max_drop=0.01)
    assert list(tmp_path.iterdir()) == []


def test_openvino_int8_rejects_unknown_float_modules(exported, tmp_path):
    pytest.importorskip("nncf", reason="NNCF is not installed")
    with pytest.raises(ValueError, match=r"float_modules \['head'\] name no operation"):
        export.quantize_openvino_int8(exported["results"]["openvino"]["file"], tmp_path / "int8.xml",
                                      np.zeros((1, 3, *TINY), np.float32), [*INT8_FLOAT_MODULES, "head"])
    assert list(tmp_path.iterdir()) == []


def test_failed_openvino_int8_verification_leaves_no_file(exported, tmp_path, monkeypatch):
    def quantize_wrong(xml_path, filepath, calibration, float_modules=(), accuracy=None, max_drop=0.0):
        """A model whose masks are inverted."""
        model = ov.Core().read_model(str(xml_path))
        logits = model.get_results()[0].input_value(0)
        negated = ov.Model([ov.opset13.negative(logits)], model.get_parameters())
        ov.save_model(negated, str(filepath))

    monkeypatch.setattr(export, "quantize_openvino_int8", quantize_wrong)
    with pytest.raises(RuntimeError, match="int8 OpenVINO masks agree with eager PyTorch at mean Dice"):
        export.export_openvino_int8(REPO / "bundles" / "polyp", tmp_path / "out" / "model_int8.xml",
                                    exported["ckpt"], calib_dir=exported["data"], calib_count=2, verify_count=2,
                                    image_size=TINY)
    assert list((tmp_path / "out").iterdir()) == []


def test_openvino_network_runs_an_onnx_model(tmp_path):
    """OpenVINO reads ONNX directly (an int8 QDQ export then runs on its int8 kernels): no .bin is required."""
    from transfuse_monai.export import export_onnx_model
    from transfuse_monai.inferers import OpenVINONetwork

    net = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    export_onnx_model(net, tmp_path / "model.onnx", (3, 16, 16))
    model = OpenVINONetwork(tmp_path / "model.onnx", precision="f32", num_threads=1)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), net(x), atol=1e-4, rtol=1e-4)


def test_throughput_mode_runs_a_batch_in_parallel_requests_in_order(exported):
    """Throughput mode gives every image of a batch its own inference request: the outputs come back in the batch's
    order and equal one-at-a-time latency-mode inference; a bad hint is refused before anything is compiled."""
    from transfuse_monai.inferers import OpenVINONetwork

    xml = exported["root"] / "models" / "model.xml"
    latency = OpenVINONetwork(xml, precision="f32", num_threads=2)
    throughput = OpenVINONetwork(xml, precision="f32", num_threads=2, performance_hint="throughput")
    assert latency.parallel_requests == 1 and throughput.parallel_requests >= 1
    assert "performance_hint='throughput'" in repr(throughput)
    torch.manual_seed(0)
    x = torch.randn(5, 3, *TINY)
    expected = torch.cat([latency(x[i : i + 1]) for i in range(len(x))])
    for _ in range(2):  # the request queue is reused from call to call
        torch.testing.assert_close(throughput(x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(throughput(x[:1]), expected[:1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="performance_hint must be one of latency, throughput"):
        OpenVINONetwork(xml, performance_hint="fast")


def test_runtime_feeds_openvino_batches_of_its_parallel_requests(exported):
    """The bundle's DataLoader takes InferenceRuntime.batch_size images at a time: the OpenVINO network's parallel
    requests (throughput, the default), 1 in latency mode and for PyTorch."""
    from monai.bundle import ConfigParser

    from transfuse_monai.bundle import FastPaths, InferenceRuntime

    ckpt = exported["ckpt"]
    paths = FastPaths("cpu", "auto", "auto", False)
    runtime = InferenceRuntime(paths, ckpt, "openvino", num_threads=2)
    net = runtime.network(None)
    assert net is runtime.network(None), "the IR is compiled once"
    assert net.performance_hint == "throughput" and runtime.batch_size == net.parallel_requests >= 1
    assert InferenceRuntime(paths, ckpt, "openvino", performance_hint="latency").batch_size == 1
    assert InferenceRuntime(paths, ckpt, "pytorch").batch_size == 1
    with pytest.raises(ValueError, match="performance_hint must be one of auto, latency, throughput"):
        InferenceRuntime(paths, ckpt, "openvino", performance_hint="fast")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_openvino.json")])
    parser.update({"bundle_root": str(REPO / "bundles" / "polyp"), "image_size": TINY,
                   "ckpt_dir": str(ckpt.parent), "num_workers": 0,
                   "input_dir": str(exported["data"] / "TestDataset" / "Kvasir" / "images")})
    assert parser.get_parsed_content("dataloader").batch_size == parser.get_parsed_content("runtime").batch_size
