"""The paper's Table 5 ablations through the polyp bundle, as a user runs them (``--ablation E.x`` on the command
line): each trains an epoch on a tiny generated dataset (E.6 is the default network, which the polyp bundle's own test
trains); the sequential one, the network that differs most, is exported to TorchScript (checked against eager PyTorch
by the export), infers a folder and is served through MONAI Label's bundle task. Every ablation scripts
with the eager network's output in ``test_transfuse.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.networks.nets import TABLE5_ABLATIONS, TransFuse
from transfuse_monai.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--image_size", "[64,64]", "--num_workers", "0"]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ablation_data")
    return Path(get_task("polyp").make_sample(root, n_train=6, test_sets={"Kvasir": 2}, size=(64, 64), seed=5))


@pytest.mark.parametrize("ablation", sorted(set(TABLE5_ABLATIONS) - {"E.6"}))
def test_ablation_trains_through_the_bundle(ablation, data, tmp_path):
    log = run(
        "monai.bundle", "run", "training", "--config_file", "bundles/polyp/configs/train.json",
        "--dataset_dir", str(data), "--epochs", "1", "--batch_size", "4", "--val_fraction", "0.34",
        "--pretrained", "false", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--ablation", ablation, *SMALL,
    )
    assert f"ablation: '{ablation}'" in log
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    expected = TransFuse(img_size=(64, 64), ablation=ablation).state_dict()
    assert list(weights) == list(expected), "the trained model is not the ablation's network"


def test_sequential_ablation_exports_and_infers_through_the_bundle(data, tmp_path):
    (tmp_path / "models").mkdir()
    torch.manual_seed(0)
    torch.save(TransFuse(img_size=(64, 64), ablation="E.3").state_dict(), tmp_path / "models" / "model.pt")
    out = run(
        "transfuse_monai.export", "bundles/polyp", "--formats", "torchscript", "--ckpt",
        str(tmp_path / "models" / "model.pt"), "--output_dir", str(tmp_path / "export"), "--image_size", "64", "64",
        "--ablation", "E.3",
    )
    assert "max |export - eager|" in out
    extra = {"inference.json": ""}
    torch.jit.load(str(tmp_path / "export" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["inference.json"])["ablation"] == "E.3"  # what MONAI Deploy reads

    images = data / "TestDataset" / "Kvasir" / "images"
    run(
        "monai.bundle", "run", "--config_file", "bundles/polyp/configs/inference.json", "--input_dir", str(images),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "pred"), "--ablation", "E.3",
        *SMALL,
    )
    for image in sorted(images.iterdir()):
        with Image.open(tmp_path / "pred" / f"{image.stem}.png") as mask, Image.open(image) as src:
            assert mask.size == src.size and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_ablation_is_served_by_monai_label(tmp_path):
    """A bundle whose inference.json names an ablation loads in MONAI Label's bundle task and labels an image."""
    pytest.importorskip("monailabel", reason="MONAI Label not installed (see README: install command)")
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = tmp_path / "polyp"
    shutil.copytree(REPO / "bundles" / "polyp" / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config.update({"ablation": "E.3", "image_size": [64, 64], "num_workers": 0})
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (bundle / "models").mkdir()
    torch.save(TransFuse(img_size=(64, 64), ablation="E.3").state_dict(), bundle / "models" / "model.pt")
    image = sorted((Path(get_task("polyp").make_sample(tmp_path / "d", n_train=1, test_sets={})) / "TrainDataset"
                    / "images").iterdir())[0]
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid()
    label_file, _ = task({"image": str(image), "device": "cpu", "result_extension": ".png"})
    with Image.open(label_file) as label, Image.open(image) as src:
        assert label.size == src.size
