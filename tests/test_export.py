"""Every bundle's network exports to TorchScript (scripted, configs embedded) and ONNX (dynamic batch); both match
eager PyTorch within 1e-4 at the bundle's input size (ONNX through ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse_monai.export import export_bundle, load_bundle_network, main

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_export_all_formats_match_eager(bundle, tmp_path):
    from monai.bundle import ConfigParser

    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)

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


def test_cli_reports_missing_checkpoint_and_writes_nothing(tmp_path, capsys):
    code = main([str(REPO / "bundles" / BUNDLES[0]), "--ckpt", str(tmp_path / "missing.pt"),
                 "--output_dir", str(tmp_path / "out")])
    assert code == 1
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown export format"):
        export_bundle(REPO / "bundles" / BUNDLES[0], formats=["tensorrt"], output_dir=tmp_path)
