# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The OpenVINO IR export and ``inference_openvino.json``: verified before it is written, nothing partial left behind,
and the bundle's inference through OpenVINO writes the masks eager PyTorch writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse_monai.export import export_bundle, export_openvino_model
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
    data = Path(get_task("polyp").make_sample(root / "data", n_train=2, test_sets={"Kvasir": 2}, size=(64, 64),
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
    return {"root": root, "data": data, "results": results}


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


def test_inference_openvino_overrides_only_the_network():
    layer = json.loads((CONFIGS / "inference_openvino.json").read_text())
    assert set(layer) == {"openvino_path", "openvino_precision", "openvino_threads", "network", "handlers#0#_disabled_"}
    assert json.loads((CONFIGS / "inference.json").read_text())["handlers"][0]["_target_"] == "CheckpointLoader"


def test_missing_model_is_named(tmp_path):
    from transfuse_monai.inferers import OpenVINONetwork

    with pytest.raises(FileNotFoundError, match=r"model\.xml not found; export it"):
        OpenVINONetwork(tmp_path / "model.xml")
