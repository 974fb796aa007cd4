"""Every bundle's network exports to TorchScript (scripted, configs embedded) and ONNX (dynamic batch, through MONAI's
``convert_to_onnx``); both match eager PyTorch within 1e-4 at the bundle's input size (ONNX through ONNX Runtime). A
failed export or verification leaves no file behind, and checkpoints are loaded strictly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse_monai.export import export_bundle, export_onnx_model, load_bundle_network, main
from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())


def _network(bundle: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_export_all_formats_match_eager(bundle, tmp_path):
    root = REPO / "bundles" / bundle
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(_network(bundle).state_dict(), ckpt)

    results = export_bundle(root, ckpt=ckpt, output_dir=tmp_path / "out")
    assert set(results) == {"torchscript", "onnx"}
    for info in results.values():
        assert Path(info["file"]).is_file() and info["max_abs_error"] < 1e-4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.ts"]  # no partial files

    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(results["torchscript"]["file"], _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]

    import onnxruntime as ort

    session = ort.InferenceSession(results["onnx"]["file"], providers=["CPUExecutionProvider"])
    net, shape = load_bundle_network(root, ckpt)
    for batch in (1, 3):  # dynamic batch axis
        x = torch.randn(batch, *shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, net(x).numpy(), atol=1e-4, rtol=0)


class _CallCounter(torch.nn.Module):
    """Adds the number of earlier calls to its input: the exported graph freezes the count seen while tracing, so
    ONNX Runtime and the next eager call disagree (a real verification failure, in seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x) + float(self.calls)


def test_failed_onnx_verification_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(RuntimeError, match="differs from eager PyTorch"):
        export_onnx_model(_CallCounter(), target, (3, 8, 8))
    assert list((tmp_path / "out").iterdir()) == []  # neither model.onnx nor the temporary file


def test_export_onnx_model_writes_dynamic_batch_graph(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    err = export_onnx_model(net, tmp_path / "tiny.onnx", (3, 16, 16))
    assert 0 <= err < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # one file: weights not written beside it

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["pred"]
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], net(x).numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="atol"):
        export_onnx_model(net, tmp_path / "never.onnx", (3, 16, 16), atol=-1.0)


def test_load_bundle_network_unwraps_and_is_strict(tmp_path):
    bundle = "polyp"
    torch.manual_seed(1)
    state = _network(bundle).state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")  # a trainer's full-state checkpoint
    net, shape = load_bundle_network(REPO / "bundles" / bundle, tmp_path / "wrapped.pt")
    assert not net.training and shape[0] == get_task(bundle).in_channels == 3
    key = next(iter(state))
    assert torch.equal(net.state_dict()[key], state[key])

    del state[key]
    torch.save(state, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match="missing"):
        load_bundle_network(REPO / "bundles" / bundle, tmp_path / "incomplete.pt")


def test_cli_reports_missing_checkpoint_and_writes_nothing(tmp_path, capsys):
    code = main([str(REPO / "bundles" / BUNDLES[0]), "--ckpt", str(tmp_path / "missing.pt"),
                 "--output_dir", str(tmp_path / "out")])
    assert code == 1
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown export format"):
        export_bundle(REPO / "bundles" / BUNDLES[0], formats=["tensorrt"], output_dir=tmp_path)
