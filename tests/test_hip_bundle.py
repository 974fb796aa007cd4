# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""End-to-end test of the hip bundle on generated radiographs (DICOM MONOCHROME2 12-bit and MONOCHROME1 16-bit,
grey and 3-channel PNG, NIfTI): train 2 epochs as a user does (``python -m monai.bundle run training`` from the
repository root), then, through the functions those commands call (``monai.bundle.run``, ``ckpt_export``,
``verify_net_in_out``; in-process, to spare an interpreter start-up each): resume for a third epoch, evaluate (HD /
HD95 / ASD in mm per class at the original resolution, the Table 3 layout, overlays), infer (label PNGs 0..3 and NIfTI
at the original size), export TorchScript; metadata, network I/O, a bad dataset stopped before training, and 2-process
DDP training on CPU (gloo, ``torch.distributed.run``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse_monai.tasks import get_task
from transfuse_monai.data import read_radiograph

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hip"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SMALL = ["--image_size", "[32,32]", "--num_workers", "0", "--pretrained", "false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SIZES = [(64, 80), (72, 64)]


def bundle(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_in_process(config_files: list[str], **override) -> None:
    """``python -m monai.bundle run`` without a new interpreter (``monai.bundle.run`` is what the command calls)."""
    from monai.bundle import run

    run(config_file=[str(CONFIGS / f) for f in config_files], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), num_workers=0, image_size=[32, 32], **override)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hip")
    data = Path(get_task("hip").make_sample(root / "data", n_train=5, n_val=2, n_test=5, size=SIZES, seed=2))
    return {"data": data, "ckpt": root / "models", "out": root / "eval", "pred": root / "pred", "root": root}


@pytest.fixture(scope="module")
def trained(work) -> dict[str, Path]:
    bundle(
        "run", "training", "--config_file", "bundles/hip/configs/train.json", "--dataset_dir", str(work["data"]),
        "--epochs", "2", "--batch_size", "3", *SMALL, "--ckpt_dir", str(work["ckpt"]), "--output_dir", str(work["out"]),
    )
    return work


def test_sample_holds_every_format(work):
    test = json.loads((work["data"] / "datalist.json").read_text())["test"]
    kinds = []
    for entry in test:
        _, info = read_radiograph(work["data"] / entry["image"])
        kinds.append((info["format"], info["photometric_interpretation"]))
    assert ("dicom", "MONOCHROME2") in kinds and ("dicom", "MONOCHROME1") in kinds
    assert kinds.count(("raster", "")) == 2 and ("nifti", "") in kinds


def test_training_writes_checkpoints_and_resumes(trained, single_thread):
    ckpt = trained["ckpt"]
    assert (ckpt / "model.pt").is_file(), "best checkpoint (by validation mean foreground Dice) missing"
    before = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    per_epoch = before["trainer"]["epoch_length"]
    assert before["trainer"]["iteration"] == 2 * per_epoch == 4  # 5 images, batches of 3
    run_in_process(
        ["train.json"], dataset_dir=str(trained["data"]), epochs=3, batch_size=3, pretrained=False,
        ckpt_dir=str(ckpt), output_dir=str(trained["out"]), resume_ckpt=str(ckpt / "checkpoint_last.pt"),
    )
    after = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert after["trainer"]["iteration"] == 3 * per_epoch and after["optimizer"]["state"]
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    assert state["cnn.conv1.weight"].shape[1] == 1, "grey-scale input: one input channel"


def test_evaluate_reports_mm_per_class_at_original_resolution(trained, capsys, single_thread):
    run_in_process(
        ["train.json", "evaluate.json"], dataset_dir=str(trained["data"]), ckpt_dir=str(trained["ckpt"]),
        output_dir=str(trained["out"]),
    )
    out = capsys.readouterr().out
    assert "the paper Table 3 layout: HD and ASD (mm) per class" in out
    assert "| class       | hd (mm) | asd (mm) |" in out
    for name in ("pelvis", "left femur", "right femur"):
        assert f"| {name}" in out
    summary = json.loads((trained["out"] / "segmentation_summary.json").read_text())["test"]
    assert summary["n"] == 5
    for metric in ("dice", "hd", "hd95", "asd"):
        for name in ("pelvis", "left femur", "right femur"):
            assert f"{metric}_{name}" in summary
    # distances in mm: an image is at most 72 x 80 pixels of 0.143 mm, so no distance can exceed its diagonal
    diagonal = float(np.hypot(72, 80) * 0.143)
    finite = [v for k, v in summary.items() if k.split("_")[0] in ("hd", "hd95", "asd") and v is not None]
    assert finite and all(0.0 <= v <= diagonal for v in finite)
    table3 = json.loads((trained["out"] / "hip_table3_summary.json").read_text())["test"]
    assert {"hd", "asd", "hd_pelvis", "asd_right femur"} <= set(table3)
    rows = (trained["out"] / "hip_table3_per_image.csv").read_text().strip().splitlines()
    assert rows[0].startswith("set,name,hd,asd,") and len(rows) == 6
    overlays = sorted((trained["out"] / "overlays").glob("*.png"))
    assert len(overlays) == 5
    for png in overlays:  # drawn at each radiograph's original size
        with Image.open(png) as pic:
            assert (pic.size[1], pic.size[0]) in SIZES


def test_inference_writes_label_maps_at_original_size(trained, single_thread):
    run_in_process(
        ["inference.json"], input_dir=str(trained["data"] / "datalist.json"), ckpt_dir=str(trained["ckpt"]),
        output_dir=str(trained["pred"]), save_nifti=True,
    )
    import nibabel as nib

    test = json.loads((trained["data"] / "datalist.json").read_text())["test"]
    names = sorted(p.name for p in trained["pred"].iterdir())
    assert not [n for n in names if n.startswith(".")], "no temporary or partial files may remain"
    for entry in test:
        stem = Path(entry["image"]).name.split(".")[0]
        image, _ = read_radiograph(trained["data"] / entry["image"])
        with Image.open(trained["pred"] / f"{stem}.png") as png:
            labels = np.asarray(png)
        assert png.mode == "L" and labels.shape == image.shape
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
        nii = nib.load(str(trained["pred"] / f"{stem}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(nii.dataobj), labels)
        assert nii.header.get_zooms()[:2] == pytest.approx((0.143, 0.143))


def test_export_and_reload_torchscript(trained, single_thread):
    from monai.bundle import ckpt_export

    ts = trained["root"] / "model.ts"
    ckpt_export(  # the function behind ``python -m monai.bundle ckpt_export``, in-process to save a start-up
        net_id="network_def", filepath=str(ts), ckpt_file=str(trained["ckpt"] / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"), image_size=[32, 32],
    )
    scripted = torch.jit.load(str(ts))
    from transfuse_monai.networks.nets import TransFuse

    eager = TransFuse(in_channels=1, out_channels=4, img_size=(32, 32)).eval()
    eager.load_state_dict(torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)
        assert eager(x).shape == (1, 4, 32, 32)


def test_metadata_and_network_io(single_thread):
    from monai.bundle import verify_metadata, verify_net_in_out

    if not SCHEMA.is_file():
        pytest.skip(f"schema not available at {SCHEMA}")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == get_task("hip").channel_def() and pred["num_channels"] == 4
    verify_net_in_out(  # at the metadata's 352 x 352
        net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
    )


def test_bad_dataset_is_reported_before_training(tmp_path):
    data = Path(get_task("hip").make_sample(tmp_path / "bad", n_train=3, n_val=1, n_test=1, size=(32, 32)))
    content = json.loads((data / "datalist.json").read_text())
    victim = data / content["training"][1]["image"]  # a MONOCHROME1 DICOM
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(data / content["training"][2]["label"])
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(  # what ``monai.bundle run`` builds; the trainer is created after the datalist check
        config_file=str(CONFIGS / "train.json"), workflow_type="train", dataset_dir=str(data), pretrained=False,
        image_size=[32, 32], num_workers=0, ckpt_dir=str(tmp_path / "m"), output_dir=str(tmp_path / "o"),
    )
    train.initialize()
    with pytest.raises(Exception) as err:
        train.run()
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    message = "\n".join(chain)
    assert victim.name in message and "unreadable or corrupt" in message
    assert "holds value(s) [9] outside the classes 0..3" in message
    assert not (tmp_path / "m").exists(), "nothing may be written when the dataset is invalid"


def test_multi_gpu_config_runs_ddp_on_cpu_with_gloo(work, tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29657",
        "-m", "monai.bundle", "run", "training", "--config_file",
        "['bundles/hip/configs/train.json','bundles/hip/configs/multi_gpu_train.json']",
        "--dataset_dir", str(work["data"]), "--epochs", "1", "--batch_size", "2", *SMALL,
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper must not leak into the saved weights"
    last = torch.load(tmp_path / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 2  # each rank: 3 of the 5 images (even_divisible), batches of 2


def test_monailabel_infer_task_returns_label_maps(work, tmp_path, single_thread):
    """MONAI Label's BundleInferTask reads the three labels from ``channel_def`` and stores a 0..3 PNG per radiograph
    (DICOM, PNG, NIfTI) at the radiograph's size."""
    pytest.importorskip("monailabel")
    import shutil

    from monailabel.tasks.infer.bundle import BundleInferTask

    from transfuse_monai.networks.nets import TransFuse

    path = tmp_path / "hip"
    shutil.copytree(BUNDLE, path, ignore=shutil.ignore_patterns("models", "eval", "output"))
    cfg = json.loads((path / "configs" / "inference.json").read_text())
    cfg.update({"image_size": [32, 32], "num_workers": 0})
    (path / "configs" / "inference.json").write_text(json.dumps(cfg, indent=2))
    (path / "models").mkdir()
    torch.manual_seed(0)
    torch.save(TransFuse(in_channels=1, out_channels=4, img_size=(32, 32)).state_dict(), path / "models" / "model.pt")
    task = BundleInferTask(str(path), {})
    assert task.is_valid() and task.labels == {"pelvis": 1, "left femur": 2, "right femur": 3}
    test = json.loads((work["data"] / "datalist.json").read_text())["test"]
    for entry in test[:3]:  # DICOM MONOCHROME2 and MONOCHROME1, and a grey PNG
        image = work["data"] / entry["image"]
        label_file, _ = task({"image": str(image), "device": "cpu", "result_extension": ".png"})
        with Image.open(label_file) as label:
            array = np.asarray(label)
        assert array.shape == read_radiograph(image)[0].shape and array.dtype == np.uint8
        assert set(np.unique(array).tolist()) <= {0, 1, 2, 3}


def test_monailabel_train_task_trains_from_a_datastore(tmp_path, single_thread):
    """MONAI Label's BundleTrainTask trains the bundle on a datastore of PNG radiographs without spacing (spacing is
    only needed to evaluate in mm) and updates ``models/model.pt``."""
    pytest.importorskip("monailabel")
    import shutil

    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    from transfuse_monai.networks.nets import TransFuse

    path = tmp_path / "hip"
    shutil.copytree(BUNDLE, path, ignore=shutil.ignore_patterns("models", "eval", "output"))
    cfg = json.loads((path / "configs" / "train.json").read_text())
    cfg.update({"image_size": [32, 32], "pretrained": False, "num_workers": 0, "batch_size": 2})
    (path / "configs" / "train.json").write_text(json.dumps(cfg, indent=2))
    (path / "models").mkdir()
    torch.manual_seed(0)
    before = TransFuse(in_channels=1, out_channels=4, img_size=(32, 32)).state_dict()
    torch.save(before, path / "models" / "model.pt")
    gen = Path(get_task("hip").make_sample(tmp_path / "gen", n_train=4, n_val=0, n_test=0, size=(48, 48),
                                           formats=("png",)))
    store = tmp_path / "datastore"
    (store / "labels" / "final").mkdir(parents=True)
    for img in sorted((gen / "images").iterdir()):
        shutil.copy(img, store / img.name)
        shutil.copy(gen / "labels" / img.name, store / "labels" / "final" / img.name)
    datastore = LocalDatastore(str(store), extensions=("*.png",), auto_reload=False)
    task = BundleTrainTask(str(path), {})
    assert task.is_valid()
    task({"model": "hip", "max_epochs": 1, "val_split": 0.25, "device": "cpu", "multi_gpu": False}, datastore)
    after = torch.load(path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before), "model.pt was not updated"
