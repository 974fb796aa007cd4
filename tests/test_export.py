"""Every bundle's network exports to TorchScript (scripted, configs embedded) and ONNX (dynamic batch, through MONAI's
``convert_to_onnx``); both match eager PyTorch within 1e-4 at the bundle's input size (ONNX through ONNX Runtime). A
failed export or verification leaves no file behind, and checkpoints are loaded strictly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse_monai.export import (
    INT8_FLOAT_MODULES,
    INT8_MIN_DICE,
    calibration_images,
    export_bundle,
    export_onnx_model,
    load_bundle_network,
    main,
    mask_dice,
    module_nodes,
    quantize_onnx_int8,
)
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
    # the input normalisation, which inference.json computes with timm, is embedded as values (MONAI Deploy's
    # runtime has no timm); the rest of the config is the bundle's
    config = json.loads((root / "configs" / "inference.json").read_text())
    embedded = json.loads(extra["inference.json"])
    if "normalization" in config:
        from transfuse_monai.networks import pretrained_normalization

        assert embedded.pop("normalization") == pretrained_normalization("S", get_task(bundle).in_channels)
        config.pop("normalization")
    # the archive runs in float32 by PyTorch where it is loaded (MONAI Deploy), whatever precision and runtime the
    # bundle picks for itself
    assert config.pop("amp") == "auto" and embedded.pop("amp") is False
    assert config.pop("backend") == "auto" and embedded.pop("backend") == "pytorch"
    assert embedded == config

    import onnxruntime as ort

    session = ort.InferenceSession(results["onnx"]["file"], providers=["CPUExecutionProvider"])
    net, shape = load_bundle_network(root, ckpt)
    for batch in (1, 3):  # dynamic batch axis
        x = torch.randn(batch, *shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, net(x).numpy(), atol=1e-4, rtol=0)


def test_embedded_metadata_describes_the_exported_input(tmp_path):
    """Overrides that change the network's input (a T2-only prostate model at 32x32) are carried into the metadata
    embedded in the TorchScript file: one channel named T2, the exported size; without overrides it is the bundle's."""
    from transfuse_monai.export import export_torchscript
    from transfuse_monai.networks.nets import TransFuse

    root = REPO / "bundles" / "prostate"
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(TransFuse(in_channels=1, out_channels=3, img_size=(32, 32)).state_dict(), ckpt)
    export_torchscript(root, tmp_path / "model.ts", ckpt, image_size=[32, 32], modalities=[0])
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    spec = json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]
    # the network's 2D size; the volume's free depth stays (MONAI Label reads the dimension from spatial_shape)
    assert (spec["num_channels"], spec["spatial_shape"], spec["channel_def"]) == (1, [32, 32, "*"], {"0": "T2"})
    assert json.loads(extra["inference.json"])["modalities"] == [0]
    bundle_meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert bundle_meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2, "the bundle's file is untouched"


def test_command_line_takes_bundle_overrides_and_names_unknown_ids(tmp_path, capsys):
    """``python -m transfuse_monai.export bundles/prostate --modalities "[0]"`` (the documented T2-only export) parses
    the override like ``monai.bundle run``; an id that inference.json lacks stops the export before anything is
    built."""
    from transfuse_monai.export import main, parse_overrides

    root = REPO / "bundles" / "prostate"
    assert parse_overrides(["--modalities", "[0]", "--largest_component=true", "--variant", "S"], root) == {
        "modalities": [0], "largest_component": True, "variant": "S"}
    with pytest.raises(ValueError, match="--modalities needs a value"):
        parse_overrides(["--modalities"], root)
    with pytest.raises(ValueError, match="unexpected argument 'extra'"):
        parse_overrides(["extra"], root)
    assert main([str(root), "--ckpt", str(tmp_path / "none.pt"), "--modalitys", "[0]"]) == 1
    err = capsys.readouterr().err
    assert "inference.json has no modalitys to override (its ids: " in err and "modalities" in err
    assert not list(tmp_path.iterdir()), "nothing written"


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


# ------------------------------------------------------------------------------------------------------ onnx-int8

INT8_BUNDLES = ("polyp", "isic2017", "hip", "prostate")  # the bundles with configs/inference_onnx.json
TINY = [64, 64]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory) -> dict[str, Path]:
    """A random-weight polyp checkpoint at 64x64, a generated polyp dataset, and its int8 ONNX export."""
    root = tmp_path_factory.mktemp("int8")
    data = Path(get_task("polyp").make_sample(root / "data", n_train=8, test_sets={"Kvasir": 2}, size=(64, 64),
                                              test_sizes=[(60, 80)], seed=1))
    torch.manual_seed(0)
    ckpt = root / "models" / "model.pt"
    ckpt.parent.mkdir()
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "polyp" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(REPO / "bundles" / "polyp"), "image_size": TINY})
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    results = export_bundle(REPO / "bundles" / "polyp", formats=["onnx-int8"], ckpt=ckpt, output_dir=root / "models",
                            calib_dir=data, calib_count=4, image_size=TINY)
    return {"root": root, "data": data, "ckpt": ckpt, "results": results}


def test_onnx_int8_export_is_verified_and_quantised(int8_export):
    import onnx

    info = int8_export["results"]["onnx-int8"]
    path = Path(info["file"])
    assert path == int8_export["root"] / "models" / "model_int8.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt", "model_int8.onnx"]  # no fp32/temporary files
    assert info["mean_dice"] >= INT8_MIN_DICE and 0 <= info["max_prob_diff"] < 1
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, sorted(ops)
    assert path.stat().st_size < 0.5 * int8_export["ckpt"].stat().st_size  # int8 weights: about a quarter of fp32


def _float_weight_convs(path: Path) -> set[str]:
    """Names of the Conv nodes of an ONNX model whose weight is a float initializer (not a DequantizeLinear output)."""
    import onnx

    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers}


@pytest.fixture(scope="module")
def fp32_tiny(int8_export) -> Path:
    """The fp32 ONNX export of the int8 fixture's checkpoint (the graph that the int8 export quantised)."""
    path = int8_export["root"] / "fp32.onnx"
    net, shape = load_bundle_network(REPO / "bundles" / "polyp", int8_export["ckpt"], image_size=TINY)
    export_onnx_model(net, path, shape)
    return path


def test_int8_export_keeps_the_segmentation_head_in_float32(int8_export, fp32_tiny):
    import onnx

    heads = [m for m in dict(_network("polyp").named_modules()) if m == "head_final" or m.startswith("head_final.")]
    assert INT8_FLOAT_MODULES == ("head_final",) and len(heads) > 1
    head_convs = module_nodes(onnx.load(str(fp32_tiny)), INT8_FLOAT_MODULES, ["Conv"])["head_final"]
    assert len(head_convs) == 2  # its 3x3 conv and the 1x1 conv to the logits
    int8 = Path(int8_export["results"]["onnx-int8"]["file"])
    assert _float_weight_convs(int8) == set(head_convs)  # every other convolution has int8 weights
    assert len(_float_weight_convs(fp32_tiny)) > 40


def test_int8_export_keeps_attention_products_in_float32(int8_export):
    """Linear layers' MatMuls get int8 weights; attention's q.k^T and attn.v (two activations) stay float32."""
    import onnx

    model = onnx.load(str(int8_export["results"]["onnx-int8"]["file"]))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    quantised = [n for n in matmuls if all(producer.get(i) == "DequantizeLinear" for i in n.input)]
    plain = [n for n in matmuls if not any(producer.get(i) == "DequantizeLinear" for i in n.input)]
    depth = len(_network("polyp").transformer.blocks)
    assert len(plain) == 2 * depth and len(quantised) == 4 * depth  # qkv, proj, fc1, fc2 per block
    initializers = {t.name for t in model.graph.initializer}
    assert not any(set(n.input) & initializers for n in plain)


def test_module_nodes_reads_both_exporters_scopes():
    from onnx import helper

    def node(name, op="Conv", scopes=None):
        n = helper.make_node(op, ["x"], ["y"], name=name)
        if scopes is not None:
            entry = n.metadata_props.add()
            entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(scopes)
        return n

    nodes = [
        node("node_conv2d_73", scopes=["", "head_final", "head_final.1", "head_final.1.conv", "conv2d_73"]),  # dynamo
        node("node_MatMul_7", "MatMul", ["", "transformer", "transformer.blocks", "transformer.blocks.0", "mm"]),
        node("/transformer/blocks/blocks.1/attn/qkv/MatMul", "MatMul"),  # TorchScript exporter names
        node("/head_final/head_final.0/conv/Conv"),
        node("/head_finally/conv/Conv"),  # a module whose name merely starts with another's
        node("/transformer/blocks/blocks.10/mlp/fc1/Add", "Add"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    found = module_nodes(model, ["head_final", "transformer.blocks.1", "transformer.blocks", "decoder1"])
    assert found == {
        "head_final": ["node_conv2d_73", "/head_final/head_final.0/conv/Conv"],
        "transformer.blocks.1": ["/transformer/blocks/blocks.1/attn/qkv/MatMul"],
        "transformer.blocks": ["node_MatMul_7", "/transformer/blocks/blocks.1/attn/qkv/MatMul",
                               "/transformer/blocks/blocks.10/mlp/fc1/Add"],
        "decoder1": [],
    }
    assert module_nodes(model, ["transformer.blocks"], ["MatMul"])["transformer.blocks"] == found[
        "transformer.blocks"][:2]


def test_quantize_rejects_unknown_float_modules(fp32_tiny, tmp_path):
    with pytest.raises(ValueError, match=r"float_modules \['head'\] match no Conv/MatMul/Gemm node"):
        quantize_onnx_int8(fp32_tiny, tmp_path / "int8.onnx", np.zeros((1, 3, *TINY), np.float32),
                           float_modules=["head_final", "head"])
    assert list(tmp_path.iterdir()) == []


def test_calibration_images_fall_back_to_a_generated_sample(tmp_path, capsys):
    images = calibration_images(REPO / "bundles" / "polyp", tmp_path / "no_data", count=3, image_size=TINY)
    assert images.shape == (3, 3, *TINY) and images.dtype == np.float32
    assert "DEMO" in capsys.readouterr().out  # the task's loud warning: synthetic calibration data


def test_failed_int8_verification_leaves_no_file(int8_export, tmp_path, monkeypatch):
    import onnx

    import transfuse_monai.export as export

    def quantize_wrong(fp32_path, filepath, calibration, **kwargs):  # a model whose masks are inverted
        model = onnx.load(str(fp32_path))
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
        model.graph.node.append(onnx.helper.make_node("Neg", [f"{out}_raw"], [out]))
        onnx.save(model, str(filepath))

    monkeypatch.setattr(export, "quantize_onnx_int8", quantize_wrong)
    with pytest.raises(RuntimeError, match="mean Dice"):
        export.export_onnx_int8(REPO / "bundles" / "polyp", tmp_path / "out" / "model_int8.onnx",
                                int8_export["ckpt"], calib_dir=int8_export["data"], calib_count=2, verify_count=2,
                                image_size=TINY)
    assert list((tmp_path / "out").iterdir()) == []


def test_mask_dice():
    a = np.array([[[[1.0, -1.0], [2.0, -3.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]]])
    b = np.array([[[[1.0, 1.0], [-2.0, -3.0]]], [[[-1.0, -2.0], [-1.0, -1.0]]]])
    np.testing.assert_allclose(mask_dice(a, b), [0.5, 1.0])  # one of two pixels shared; two empty masks agree
    two = np.stack([-a[:, 0], a[:, 0]], 1)  # softmax-style: the foreground wins where a > 0
    np.testing.assert_allclose(mask_dice(two, two), [1.0, 1.0])


def test_inference_onnx_config_matches_pytorch_inference(int8_export, tmp_path):
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    configs = REPO / "bundles" / "polyp" / "configs"
    images = int8_export["data"] / "TestDataset" / "Kvasir" / "images"
    common = dict(meta_file=str(configs / "metadata.json"), workflow_type="infer", input_dir=str(images),
                  image_size=TINY, num_workers=0, ckpt_dir=str(int8_export["root"] / "models"))
    for name, files in (("torch", [configs / "inference.json"]),
                        ("int8", [configs / "inference.json", configs / "inference_onnx.json"])):
        workflow = ConfigWorkflow(config_file=[str(f) for f in files], output_dir=str(tmp_path / name), **common)
        workflow.initialize()
        if name == "int8":
            assert type(workflow.parser.get_parsed_content("network")).__name__ == "OnnxRuntimeNetwork"
        workflow.run()
        workflow.finalize()
    inputs = sorted(images.iterdir())
    for src in inputs:
        masks = [np.asarray(Image.open(tmp_path / name / f"{src.stem}.png")) > 0 for name in ("torch", "int8")]
        with Image.open(src) as img:
            assert masks[0].shape == masks[1].shape == img.size[::-1]
        agree = (masks[0] == masks[1]).mean()
        assert agree >= 0.98, f"{src.name}: int8 and PyTorch masks agree on {agree:.1%} of pixels"


@pytest.mark.parametrize("bundle", INT8_BUNDLES)
def test_inference_onnx_overrides_only_the_network(bundle):
    """inference_onnx.json is layered over inference.json: the same file in every bundle, naming the ONNX Runtime
    backend and its options; inference.json builds the network from them and disables handler 0, which must be the
    CheckpointLoader (an ONNX model has no weights to load)."""
    configs = REPO / "bundles" / bundle / "configs"
    onnx_cfg = json.loads((configs / "inference_onnx.json").read_text())
    assert onnx_cfg == json.loads((REPO / "bundles" / "polyp" / "configs" / "inference_onnx.json").read_text())
    assert set(onnx_cfg) == {"onnx_path", "onnx_threads", "backend", "runtime_options"}
    assert onnx_cfg["backend"] == "onnxruntime"
    assert onnx_cfg["runtime_options"] == {"model_path": "@onnx_path", "num_threads": "@onnx_threads"}
    base = json.loads((configs / "inference.json").read_text())
    assert base["handlers"][0]["_target_"] == "CheckpointLoader"
    assert base["handlers"][0]["_disabled_"] == "$bool(@init_ckpt) or @runtime.exported"
    assert base["network"] == "$@runtime.network(@network_init)" and base["inferer"].startswith("$@runtime.inferer(")