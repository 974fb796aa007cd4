"""A checkpoint trained at one input size loads in every consumer of a bundle built for another size.

TransFuse resamples a ``transformer.pos_embed`` of another token grid in a ``load_state_dict`` pre-hook, so plain
``load_state_dict``, MONAI's ``CheckpointLoader`` (bundle inference and evaluation), the export CLI and MONAI Label's
``BundleInferTask`` all accept it, and the loaded network equals one loaded with ``load_transfuse_checkpoint``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.networks.nets import TransFuse, load_transfuse_checkpoint
from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "polyp"
CONFIGS = BUNDLE / "configs"
KEY = "transformer.pos_embed"


def _net(size) -> TransFuse:
    return TransFuse(in_channels=3, out_channels=1, img_size=size, variant="S").eval()


@pytest.fixture(scope="module")
def ckpt32(tmp_path_factory) -> dict:
    """A state dict of a network built for 32x32 (a 2x2 token grid), its file, and the reference 64x64 network
    loaded from it through ``load_transfuse_checkpoint``."""
    root = tmp_path_factory.mktemp("ckpt32")
    torch.manual_seed(0)
    state = _net((32, 32)).state_dict()
    torch.nn.init.normal_(state[KEY])  # a distinctive embedding, so that a wrong resampling shows
    path = root / "model.pt"
    torch.save(state, path)
    reference = load_transfuse_checkpoint(_net((64, 64)), path)
    return {"state": state, "path": path, "reference": reference.state_dict(), "root": root}


def _assert_same_weights(net: torch.nn.Module, reference: dict) -> None:
    state = net.state_dict()
    assert state[KEY].shape == reference[KEY].shape == (1, 16, 384)
    for key, value in reference.items():
        torch.testing.assert_close(state[key].cpu(), value, rtol=0, atol=0, msg=key)


def test_plain_load_state_dict_resamples_the_position_embedding(ckpt32, single_thread):
    net = _net((64, 64))
    net.load_state_dict(torch.load(ckpt32["path"], map_location="cpu", weights_only=True))
    _assert_same_weights(net, ckpt32["reference"])
    assert not torch.equal(net.state_dict()[KEY][:, :4], ckpt32["state"][KEY]), "the embedding was not resampled"

    reference = _net((64, 64))
    reference.load_state_dict(ckpt32["reference"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)

    # the hook follows prefixes (a wrapped network) and leaves the caller's dict untouched
    wrapped = torch.nn.Sequential(_net((64, 64)))
    given = {f"0.{k}": v for k, v in ckpt32["state"].items()}
    wrapped.load_state_dict(given)
    assert given[f"0.{KEY}"].shape == (1, 4, 384)
    _assert_same_weights(wrapped[0], ckpt32["reference"])


def test_same_size_load_is_untouched_and_unknown_grid_is_a_clear_error(ckpt32, single_thread):
    net = _net((32, 32))
    net.load_state_dict(ckpt32["state"])
    torch.testing.assert_close(net.state_dict()[KEY], ckpt32["state"][KEY], rtol=0, atol=0)

    odd = dict(ckpt32["state"])
    odd[KEY] = torch.zeros(1, 12, 384)  # neither square nor of the 1:1 model's aspect ratio
    with pytest.raises(ValueError, match=r"transformer.pos_embed \(1, 12, 384\).*img_size=\(32, 32\).*source_grid"):
        net.load_state_dict(odd)
    # another width still fails in the strict shape check, not in the hook
    wide = dict(ckpt32["state"])
    wide[KEY] = torch.zeros(1, 4, 10)
    with pytest.raises(RuntimeError, match="size mismatch for transformer.pos_embed"):
        net.load_state_dict(wide)


def _workflow(config_file, **overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=config_file, meta_file=str(CONFIGS / "metadata.json"), workflow_type=None,
        logging_file=str(CONFIGS / "logging.conf"), num_workers=0, **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def test_bundle_inference_at_352_runs_with_a_96_model(tmp_path, single_thread):
    """The README scenario: the demo training writes a 96x96 model; inference at the config's 352x352 uses it."""
    torch.manual_seed(1)
    trained96 = _net((96, 96))
    torch.save(trained96.state_dict(), tmp_path / "model_96.pt")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / "frame.png")

    wf = _workflow(
        str(CONFIGS / "inference.json"), input_dir=str(images), output_dir=str(tmp_path / "pred"),
        ckpt_path=str(tmp_path / "model_96.pt"),
    )
    assert wf.parser.get_parsed_content("image_size") == [352, 352]
    with Image.open(tmp_path / "pred" / "frame.png") as mask:
        assert mask.size == (56, 40)
    reference = load_transfuse_checkpoint(_net((352, 352)), tmp_path / "model_96.pt").state_dict()
    net = wf.parser.get_parsed_content("network")
    assert net.state_dict()[KEY].shape == (1, 484, 384)
    torch.testing.assert_close(net.state_dict()[KEY].cpu(), reference[KEY], rtol=0, atol=0)


def test_bundle_evaluation_loads_a_checkpoint_of_another_size(ckpt32, tmp_path, single_thread):
    data = Path(get_task("polyp").make_sample(tmp_path / "data", n_train=1, test_sets={"Kvasir": 2}, size=(40, 56)))
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    shutil.copy(ckpt32["path"], ckpt_dir / "model.pt")
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    wf = _workflow(
        configs, dataset_dir=str(data), image_size=[64, 64], pretrained=False, ckpt_dir=str(ckpt_dir),
        output_dir=str(tmp_path / "eval"), test_sets=["Kvasir"],
    )
    summary = json.loads((tmp_path / "eval" / "polyp_summary.json").read_text())
    assert 0.0 <= summary["Kvasir"]["dice"] <= 1.0
    rows = (tmp_path / "eval" / "polyp_per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + the two Kvasir frames
    _assert_same_weights(wf.parser.get_parsed_content("network"), ckpt32["reference"])


def test_export_cli_accepts_a_checkpoint_of_another_size(ckpt32, tmp_path, single_thread):
    from transfuse_monai.export import main

    code = main([str(BUNDLE), "--formats", "torchscript", "--ckpt", str(ckpt32["path"]), "--image_size", "64", "64",
                 "--output_dir", str(tmp_path)])
    assert code == 0
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    reference = _net((64, 64))
    reference.load_state_dict(ckpt32["reference"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), reference(x), atol=1e-5, rtol=0)


def test_monailabel_bundle_infer_task_loads_a_model_of_another_size(ckpt32, tmp_path, single_thread):
    pytest.importorskip("monailabel", reason="MONAI Label not installed (see README: install command)")
    from monailabel.tasks.infer.bundle import BundleInferTask

    data = Path(get_task("polyp").make_sample(tmp_path / "data", n_train=1, test_sets={}, size=(40, 56)))
    image = next((data / "TrainDataset" / "images").iterdir())

    def label_of(weights: dict, name: str) -> np.ndarray:
        path = tmp_path / name / "polyp"
        shutil.copytree(BUNDLE, path, ignore=shutil.ignore_patterns("models", "eval", "output"))
        cfg_path = path / "configs" / "inference.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update({"image_size": [64, 64], "num_workers": 0})
        cfg_path.write_text(json.dumps(cfg, indent=2))
        (path / "models").mkdir()
        torch.save(weights, path / "models" / "model.pt")
        task = BundleInferTask(str(path), {})
        label_file, _ = task({"image": str(image), "device": "cpu", "result_extension": ".png"})
        with Image.open(label_file) as label:
            return np.asarray(label)

    # weights at 32x32 (resampled by the hook) and the same weights already resampled give the same label
    resampled = label_of(ckpt32["state"], "from32")
    expected = label_of(ckpt32["reference"], "from64")
    assert resampled.shape == (40, 56)
    np.testing.assert_array_equal(resampled, expected)
